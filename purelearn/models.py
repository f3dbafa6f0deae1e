"""Models as pairs of pure functions: ``init(key)`` and ``apply(...)``.

A :class:`Model` is what the training loop needs and nothing more::

    params, model_state = model.init(key)
    logits, new_model_state = model.apply(params, model_state, x, train=True, key=key)

``params`` are what the optimizer updates; ``model_state`` is what the forward
pass updates (batch-norm running statistics). :func:`mlp` builds the textbook's
multi-layer net from the layer functions; :func:`from_flax` wraps a
``flax.linen`` module or a ``flax.nnx`` module (or a factory of one).

The training engine compiles ``model.apply`` with the model as a static
argument, so a model is hashable (its functions compare by identity) and its
functions are pure: the same arrays in give the same arrays out, and all
randomness comes from the ``key`` argument.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from purelearn import _checks
from purelearn._cache import memoize
from purelearn.initializers import he_normal, normal, xavier_normal
from purelearn.normalization import BatchNormStats
from purelearn.normalization import batch_norm as _batch_norm
from purelearn.regularization import dropout

__all__ = ["Model", "mlp", "from_flax"]

Initializer = Callable[..., jax.Array]

#: the two scalings of :func:`~purelearn.regularization.dropout`
DropoutScale = Literal["inverted", "textbook"]
_DROPOUT_SCALES: tuple[DropoutScale, ...] = ("inverted", "textbook")

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "identity": lambda x: x,
}

# init names and the rule each stands for ("relu" nets want He, "sigmoid"/"tanh" nets Xavier)
_INITS = {"he": "he", "relu": "he", "xavier": "xavier", "sigmoid": "xavier", "tanh": "xavier"}


class Model(NamedTuple):
    """A model as two pure functions.

    Attributes:
      init: ``init(key) -> (params, model_state)``; ``key`` may be an int seed.
      apply: ``apply(params, model_state, x, *, train, key=None) ->
        (logits, new_model_state)``; ``key`` drives Dropout when ``train``.
    """

    init: Callable[[jax.Array], tuple[Any, Any]]
    apply: Callable[..., tuple[jax.Array, Any]]


# -- shared argument handling --------------------------------------------------


def _inputs(x: Any, name: str = "x") -> jax.Array:
    """``x`` as an array with a leading batch axis; errors call it ``name``."""
    if not isinstance(x, jax.Array):
        try:
            x = jnp.asarray(x)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{name} must be an array of inputs, got {type(x).__name__}: {err}"
            ) from err
    if x.ndim == 0:
        raise ValueError(f"{name} must have a leading batch axis, got a scalar {x!r}")
    inputs: jax.Array = x
    return inputs


def _call_args(train: Any, key: Any) -> tuple[bool, jax.Array | None]:
    """``train`` as a bool and ``key`` as a typed key (or None), checked before tracing."""
    train = _checks.boolean("train", train)
    return train, None if key is None else _checks.key_or_seed("key", key)


# -- the textbook's MLP --------------------------------------------------------


def _check_sizes(sizes: Any) -> tuple[int, ...]:
    if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence | np.ndarray):
        raise ValueError(
            f"sizes must be a sequence of layer widths (input ... output), got {sizes!r}"
        )
    widths = tuple(_checks.positive_int(f"sizes[{i}]", s) for i, s in enumerate(sizes))
    if len(widths) < 2:
        raise ValueError(
            f"sizes must hold at least two widths (input and output), got {list(widths)!r}"
        )
    return widths


def _check_activation(activation: Any) -> str | Callable[[jax.Array], jax.Array]:
    if isinstance(activation, str):
        if activation.lower() not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)} or a function, "
                f"got {activation!r}"
            )
        return activation.lower()
    if not callable(activation):
        raise ValueError(
            f"activation must be one of {sorted(_ACTIVATIONS)} or a function, got {activation!r}"
        )
    fn: Callable[[jax.Array], jax.Array] = activation
    return fn


def _check_init(init: Any) -> str | float | Initializer:
    if isinstance(init, str):
        if init.lower() not in _INITS:
            raise ValueError(
                f"init must be 'he', 'xavier', a standard deviation or an "
                f"initializer function, got {init!r}"
            )
        return _INITS[init.lower()]
    if callable(init):
        initializer: Initializer = init
        return initializer
    if _checks.is_real(init):
        # a number is the textbook's weight_init_std
        return _checks.real("init (the weight standard deviation)", init, low=0, low_open=True)
    raise ValueError(
        f"init must be 'he', 'xavier', a standard deviation > 0 or an initializer "
        f"function init(key, shape, dtype), got {init!r}"
    )


def _callable_check(
    name: str, fn: Callable[..., Any], shape: tuple[int, ...], call: Callable[[jax.Array], Any]
) -> None:
    """Trace ``call`` abstractly (no compute) so a bad ``fn`` fails at construction."""
    try:
        out = jax.eval_shape(call, jax.random.key(0))
    except Exception as err:  # any failure of the user's function, said in one sentence
        raise ValueError(f"{name} {fn!r} cannot be used on shape {shape}: {err}") from err
    got = getattr(out, "shape", None)
    if got != shape:
        raise ValueError(f"{name} {fn!r} must return an array of shape {shape}, got {got}")


def mlp(
    sizes: Sequence[int],
    *,
    activation: str | Callable[[jax.Array], jax.Array] = "relu",
    init: str | float | Initializer = "he",
    batch_norm: bool = False,
    dropout_rate: float = 0.0,
    dropout_scale: DropoutScale = "inverted",
    batch_norm_eps: float = 1e-5,
) -> Model:
    """The textbook's fully connected net (``MultiLayerNetExtend``).

    Each hidden layer is ``Affine -> BatchNorm (optional) -> activation ->
    Dropout (optional)``; the last layer is a plain ``Affine`` giving logits.
    Weights come from ``init``; biases (and batch-norm shifts) start at 0,
    batch-norm scales at 1.

    The same settings give the same :class:`Model` object (``mlp([4, 3]) is
    mlp((4, 3))``), so a second identical ``fit`` reuses its compiled
    programs. Every argument is checked here; ``apply`` checks that ``x``
    has ``sizes[0]`` features and that ``params`` are this net's.

    Args:
      sizes: layer widths including input and output, e.g.
        ``(784, 100, 100, 100, 100, 10)`` for the 5-layer net.
      activation: "relu", "sigmoid", "tanh" (or "gelu", "elu", "leaky_relu",
        "identity"), or an elementwise function.
      init: "he" (std sqrt(2/fan_in)), "xavier" (std sqrt(1/fan_in)), a
        number (the textbook's ``weight_init_std``), or an initializer
        ``init(key, shape, dtype)``. "relu" means "he"; "sigmoid" and
        "tanh" mean "xavier".
      batch_norm: insert batch normalization after each hidden affine layer.
      dropout_rate: drop probability in ``[0, 1)`` after each hidden activation.
      dropout_scale: ``"inverted"`` (kept units scaled by ``1 / (1 - rate)`` in
        training, nothing at inference) or ``"textbook"`` (the book's ``Dropout``:
        the mask alone in training, ``x * (1 - rate)`` at inference). The same
        function, but SGD on the textbook form trains like the inverted form at
        ``(1 - rate)**2`` the learning rate (see :func:`~purelearn.dropout`).
      batch_norm_eps: the ``eps`` added to the batch variance (the book's code
        uses ``10e-7 = 1e-6``); it matters when the batch variance is that small,
        e.g. with tiny initial weights.

    Returns:
      A :class:`Model`. ``params`` is a list with one dict per layer
      (``w``, ``b``, and ``scale``/``bias`` with batch norm); ``model_state``
      is a list of :class:`~purelearn.normalization.BatchNormStats`, one per
      hidden layer (empty without batch norm).

    Example:
      >>> import jax, purelearn as pl
      >>> model = pl.mlp([4, 8, 3], batch_norm=True)
      >>> params, state = model.init(jax.random.key(0))
      >>> logits, state = model.apply(params, state, jax.numpy.ones((2, 4)), train=True)
      >>> logits.shape, [sorted(p) for p in params]
      ((2, 3), [['b', 'bias', 'scale', 'w'], ['b', 'w']])
      >>> pl.mlp([4, 8, 3]) is pl.mlp((4, 8, 3))
      True
      >>> book = pl.mlp([4, 8, 3], dropout_rate=0.2, dropout_scale="textbook")
      >>> book is pl.mlp([4, 8, 3], dropout_rate=0.2, dropout_scale="textbook")
      True
    """
    checked = (_check_sizes(sizes), _check_activation(activation), _check_init(init))
    use_bn = _checks.boolean("batch_norm", batch_norm)
    rate = _checks.probability("dropout_rate", dropout_rate)
    scale = _checks.choice("dropout_scale", dropout_scale, _DROPOUT_SCALES)
    eps = _checks.real("batch_norm_eps", batch_norm_eps, low=0, low_open=True)
    return _mlp(
        *checked,
        use_bn,
        rate,
        # settings that change nothing map to one Model (and one compiled program)
        scale if rate > 0 else "inverted",
        eps if use_bn else 1e-5,
    )


@memoize
def _mlp(
    sizes: tuple[int, ...],
    activation: str | Callable[[jax.Array], jax.Array],
    init: str | float | Initializer,
    use_bn: bool,
    dropout_rate: float,
    dropout_scale: DropoutScale = "inverted",
    bn_eps: float = 1e-5,
) -> Model:
    """:func:`mlp` on checked, canonical settings (one Model per distinct setting)."""
    if isinstance(activation, str):
        act = _ACTIVATIONS[activation]
    else:
        act = activation
        shape = (2, sizes[1])
        _callable_check("activation", act, shape, lambda _: act(jnp.zeros(shape, jnp.float32)))
    if init == "he":
        weight_init = he_normal()
    elif init == "xavier":
        weight_init = xavier_normal()
    elif isinstance(init, float):
        weight_init = normal(init)
    else:
        assert not isinstance(init, str)  # _check_init gives "he" or "xavier" only
        weight_init = init
        shape = (sizes[0], sizes[1])
        _callable_check("init", init, shape, lambda k: init(k, shape, jnp.float32))
    num_hidden = len(sizes) - 2
    weight_shapes = list(itertools.pairwise(sizes))

    def init_fn(key: jax.Array) -> tuple[list[dict[str, jax.Array]], list[BatchNormStats]]:
        keys = jax.random.split(_checks.key_or_seed("key", key), len(weight_shapes))
        params = []
        for i, (k, (fan_in, fan_out)) in enumerate(zip(keys, weight_shapes, strict=True)):
            layer = {"w": weight_init(k, (fan_in, fan_out), jnp.float32), "b": jnp.zeros(fan_out)}
            if use_bn and i < num_hidden:
                layer["scale"] = jnp.ones(fan_out)
                layer["bias"] = jnp.zeros(fan_out)
            params.append(layer)
        stats = [BatchNormStats.init(n) for n in sizes[1:-1]] if use_bn else []
        return params, stats

    def check(params: Any, model_state: Any, x: jax.Array) -> None:
        # shapes are static, so these checks cost nothing inside jit
        if x.shape[-1] != sizes[0]:
            raise ValueError(
                f"x has {x.shape[-1]} features (shape {tuple(x.shape)}), but this mlp "
                f"takes {sizes[0]} (sizes[0])"
            )
        try:
            got = [tuple(np.shape(layer["w"])) for layer in params]
        except (TypeError, KeyError, IndexError):
            got = None
        if got != weight_shapes:
            raise ValueError(
                f"params do not belong to this mlp: expected weight shapes {weight_shapes}, "
                f"got {got if got is not None else type(params).__name__}"
            )
        if use_bn and (not isinstance(model_state, Sequence) or len(model_state) != num_hidden):
            raise ValueError(
                f"model_state must hold {num_hidden} BatchNormStats (one per hidden layer), "
                f"got {type(model_state).__name__} of length {len(model_state)}"
                if isinstance(model_state, Sequence)
                else f"model_state must be a list of {num_hidden} BatchNormStats, "
                f"got {type(model_state).__name__}"
            )

    def apply_fn(
        params: Any,
        model_state: Any,
        x: Any,
        *,
        train: bool,
        key: jax.Array | int | None = None,
    ) -> tuple[jax.Array, list[BatchNormStats]]:
        train, key = _call_args(train, key)
        x = _inputs(x)
        check(params, model_state, x)
        if train and dropout_rate > 0 and key is None:
            raise ValueError("this model uses dropout: apply(..., train=True) needs a key")
        new_stats = []
        for i, layer in enumerate(params[:-1]):
            x = x @ layer["w"] + layer["b"]
            if use_bn:
                x, s = _batch_norm(
                    x, layer["scale"], layer["bias"], model_state[i], train=train, eps=bn_eps
                )
                new_stats.append(s)
            x = act(x)
            if dropout_rate > 0:
                # (a missing key with train=True was refused above)
                layer_key = jax.random.fold_in(key, i) if train and key is not None else None
                x = dropout(
                    layer_key, x, dropout_rate, deterministic=not train, scale=dropout_scale
                )
        return x @ params[-1]["w"] + params[-1]["b"], new_stats

    return Model(init_fn, apply_fn)


# -- flax ----------------------------------------------------------------------

_KINDS = (
    "module must be a flax.linen Module instance (MyNet()), a flax.nnx Module instance "
    "(MyNet(..., rngs=nnx.Rngs(0))) or an nnx factory (lambda rngs: MyNet(..., rngs=rngs))"
)


def _explain_input(err: Exception, x: jax.Array, sample: jax.ShapeDtypeStruct) -> None:
    """Re-raise a module's failure on ``x`` as a ValueError when ``x`` is not shaped like
    the sample input (the usual cause); otherwise let the original error stand."""
    if tuple(x.shape[1:]) != tuple(sample.shape[1:]):
        raise ValueError(
            f"the model cannot be applied to x of shape {tuple(x.shape)}: it was wrapped "
            f"with sample_input of shape {tuple(sample.shape)} (per example "
            f"{tuple(sample.shape[1:])}, given {tuple(x.shape[1:])}): {err}"
        ) from err


def _mode_kwargs(call: Callable[..., Any], train: bool) -> dict[str, bool]:
    """``train`` or ``deterministic`` for a ``__call__`` that takes one of them."""
    params = inspect.signature(call).parameters
    if "train" in params:
        return {"train": train}
    if "deterministic" in params:
        return {"deterministic": not train}
    return {}


def from_flax(module: Any, sample_input: Any) -> Model:
    """Wrap a ``flax.linen`` or ``flax.nnx`` module as a :class:`Model`.

    **linen**: ``params`` is the module's ``"params"`` collection;
    ``model_state`` is a dict of every other collection (``{"batch_stats":
    ...}``), updated in training. If ``__call__`` takes ``train`` it is passed
    through; if it takes ``deterministic``, ``not train`` is. The key feeds the
    ``"dropout"`` rng stream. ``init(key)`` initializes from ``key``.

    **nnx**: pass a module instance, or a factory ``lambda rngs: MyNet(...,
    rngs=rngs)`` (an nnx Module class whose only argument is ``rngs`` also
    works). ``params`` are the ``nnx.Param`` variables and ``model_state``
    every other variable (``nnx.BatchStat`` ...) except RNG streams, both as
    nested dicts of arrays (``nnx.update(net, state.params, state.model_state)``
    writes trained values back into a module). Train and eval modes are
    ``module.train()`` / ``module.eval()`` (``deterministic`` and
    ``use_running_average`` set on every submodule), and ``train`` /
    ``deterministic`` / ``rngs`` are passed to ``__call__`` when it takes them.
    The module's RNG streams are not state: each call reseeds every stream
    (each Dropout's) from ``key``, so the same key gives the same result and
    no counter advances between calls (without a key, in eval mode, from a
    fixed key). With a factory, ``init(key)`` builds the module from
    ``nnx.Rngs(key)``: different keys, different weights. With an instance,
    ``init`` returns (copies of) the weights it holds when wrapped, whatever
    the key; the run's key then only seeds dropout and shuffling.

    The module is applied to ``sample_input`` here (abstractly, no compute),
    so a module that cannot take it fails at this call.

    Args:
      module: a ``flax.linen.Module`` instance, a ``flax.nnx.Module``
        instance, or a factory ``rngs -> nnx.Module``.
      sample_input: an input batch of the right shape (used by linen's
        ``init`` and to check the module).

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, purelearn as pl
      >>> model = pl.from_flax(nn.Dense(3), jnp.ones((1, 4)))
      >>> params, state = model.init(jax.random.key(0))
      >>> model.apply(params, state, jnp.ones((2, 4)), train=False)[0].shape
      (2, 3)
      >>> from flax import nnx
      >>> model = pl.from_flax(lambda rngs: nnx.Linear(4, 3, rngs=rngs), jnp.ones((1, 4)))
      >>> params, state = model.init(jax.random.key(0))
      >>> sorted(params), model.apply(params, state, jnp.ones((2, 4)), train=True)[0].shape
      (['bias', 'kernel'], (2, 3))
    """
    import flax.linen as linen
    from flax import nnx

    if isinstance(module, linen.Module):
        if not _defines_call(type(module)):
            raise ValueError(
                f"the linen module {type(module).__name__} has no __call__: from_flax "
                "applies module(x); give it a __call__ that maps inputs to logits"
            )
        return _from_linen(module, _inputs(sample_input, "sample_input"))
    if isinstance(module, nnx.Module):
        _check_nnx_call(type(module))
        return _from_nnx(None, module, _inputs(sample_input, "sample_input"))
    if isinstance(module, type) and issubclass(module, linen.Module):
        raise ValueError(
            f"module must be a flax module instance: from_flax got the linen class "
            f"{module.__name__}, not an instance: "
            f"pass {module.__name__}(...)"
        )
    if isinstance(module, type) and not issubclass(module, nnx.Module):
        raise ValueError(f"{_KINDS}; got the class {module.__name__}")
    if not callable(module):
        raise ValueError(f"{_KINDS}; got {type(module).__name__} {module!r}")
    return _from_nnx(
        _factory(module), None, _inputs(sample_input, "sample_input"), label=repr(module)
    )


def _from_linen(module: Any, sample_input: jax.Array) -> Model:
    from flax.errors import InvalidRngError

    sample = jax.ShapeDtypeStruct(sample_input.shape, sample_input.dtype)

    modes = {train: _mode_kwargs(module.__call__, train) for train in (False, True)}

    def mode(train: bool) -> dict[str, bool]:
        return modes[train]

    def init_fn(key: jax.Array | int) -> tuple[Any, dict[str, Any]]:
        params_key, dropout_key = jax.random.split(_checks.key_or_seed("key", key))
        variables = module.init(
            {"params": params_key, "dropout": dropout_key}, sample_input, **mode(False)
        )
        variables = dict(variables)
        params = variables.pop("params", {})
        return params, variables

    def apply_fn(
        params: Any,
        model_state: Any,
        x: Any,
        *,
        train: bool,
        key: jax.Array | int | None = None,
    ) -> tuple[Any, Any]:
        train, key = _call_args(train, key)
        x = _inputs(x)
        variables = {"params": params, **model_state}
        rngs = {"dropout": key} if key is not None else {}
        try:
            if train and model_state:
                logits, updated = module.apply(
                    variables, x, rngs=rngs, mutable=list(model_state), **mode(True)
                )
                return logits, {**model_state, **updated}
            return module.apply(variables, x, rngs=rngs, **mode(train)), model_state
        except InvalidRngError as err:
            if key is None:
                raise ValueError(
                    f"this model uses randomness (Dropout): apply(..., train=True) needs a key "
                    f"({err})"
                ) from err
            raise
        except Exception as err:  # re-raised as is unless x's shape is the cause
            _explain_input(err, x, sample)
            raise

    try:
        jax.eval_shape(init_fn, jax.random.key(0))
    except Exception as err:  # the module cannot take sample_input: say so now
        raise ValueError(
            f"from_flax: {type(module).__name__}.init fails on sample_input of shape "
            f"{tuple(sample_input.shape)}: {err}"
        ) from err
    return Model(init_fn, apply_fn)


def _defines_call(cls: type) -> bool:
    """Whether instances of ``cls`` are callable (``getattr(cls, "__call__")`` would find
    the metaclass's)."""
    return any("__call__" in vars(c) for c in cls.__mro__ if c is not object)


def _check_like(name: str, tree: Any, like: Any, what: str) -> None:
    """``tree`` has ``like``'s structure and leaf shapes (static, so free inside jit)."""
    same = jax.tree.structure(tree) == jax.tree.structure(like)  # type: ignore[operator]  # jaxlib: no PyTreeDef stub
    if same:
        bad = [
            (jax.tree_util.keystr(path), tuple(np.shape(a)), tuple(b.shape))
            for (path, a), b in zip(
                jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(like), strict=True
            )
            if tuple(np.shape(a)) != tuple(b.shape)
        ]
        if not bad:
            return
        detail = ", ".join(f"{p} has shape {a}, expected {b}" for p, a, b in bad[:3])
    else:
        detail = f"structure {jax.tree.structure(tree)}, expected {jax.tree.structure(like)}"
    raise ValueError(f"{name} do not belong to this model (the module's {what}): {detail}")


def _check_nnx_call(cls: type) -> None:
    if not _defines_call(cls):
        raise ValueError(
            f"the nnx module {cls.__name__} has no __call__: from_flax applies module(x); "
            "give it a __call__ that maps inputs to logits (or wrap it in one that does)"
        )


def _factory(fn: Callable[..., Any]) -> Callable[[Any], Any]:
    """``fn`` as ``rngs -> module``: called with ``rngs=`` when it names that argument or
    takes ``**kwargs`` (an nnx Module class, or a ``functools.partial`` of one, shows its
    metaclass's ``(*args, **kwargs)``), else with one positional argument."""
    # a class's own __init__ is the signature to read (mypy refuses __init__ on a value)
    target = fn.__init__ if isinstance(fn, type) else fn  # type: ignore[misc]
    params: Mapping[str, inspect.Parameter | None]
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # no signature (some builtins): try the keyword
        params = {"rngs": None}
    if "rngs" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values() if p is not None
    ):
        return lambda rngs: fn(rngs=rngs)
    try:
        inspect.signature(fn).bind(None)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{_KINDS}; got {fn!r}, which cannot be called with one argument (rngs)"
        ) from err
    return fn


def _from_nnx(
    factory: Callable[[Any], Any] | None, instance: Any, sample_input: jax.Array, label: str = ""
) -> Model:
    from flax import nnx
    from flax.traverse_util import unflatten_dict

    if factory is not None:
        try:
            template = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))
        except Exception as err:  # a plain function, or a factory that fails: say which
            raise ValueError(f"{_KINDS}; calling {label} with an nnx.Rngs failed: {err}") from err
        if not isinstance(template, nnx.Module):
            raise ValueError(
                f"{_KINDS}; calling {label} with an nnx.Rngs returned "
                f"{type(template).__name__}, not an nnx.Module"
            )
        _check_nnx_call(type(template))
    else:
        template = nnx.clone(instance)
    # sown intermediates are outputs of a past call, not state
    nnx.pop(template, nnx.Intermediate)
    filters = (nnx.Param, nnx.RngState, ...)
    mode_attrs = ("deterministic", "use_running_average")

    def split(module: Any, train: bool) -> tuple[Any, ...]:
        attrs = dict.fromkeys(mode_attrs, not train)
        view = nnx.with_attributes(module, raise_if_not_found=False, **attrs)
        return nnx.split(view, *filters)

    graph_eval, params0, rngs0, rest0 = split(template, train=False)
    graph_train = split(template, train=True)[0]
    params0, rest0 = nnx.to_pure_dict(params0), nnx.to_pure_dict(rest0)
    if factory is None:  # a snapshot of its own: later changes to the module do not reach it
        params0, rest0 = jax.tree.map(jnp.copy, (params0, rest0))
    rest_tree = jax.tree.structure(rest0)
    # every RNG stream's (path, shape): apply reseeds them all from its key
    rng_leaves = [
        (path, tuple(var.shape), isinstance(var, nnx.RngKey))
        for path, var in nnx.to_flat_state(rngs0)
    ]
    call = type(template).__call__
    sample = jax.ShapeDtypeStruct(sample_input.shape, sample_input.dtype)
    takes_rngs = "rngs" in inspect.signature(call).parameters
    modes = {train: _mode_kwargs(call, train) for train in (False, True)}
    needs_key = bool(rng_leaves) or takes_rngs

    def init_fn(key: jax.Array | int) -> tuple[Any, Any]:
        key = _checks.key_or_seed("key", key)
        if factory is None:
            # copies: the engine donates its state's buffers, the user's module keeps its own
            copies: tuple[Any, Any] = jax.tree.map(jnp.copy, (params0, rest0))
            return copies
        _, *states = nnx.split(factory(nnx.Rngs(key)), *filters)
        params, rest = nnx.to_pure_dict(states[0]), nnx.to_pure_dict(states[2])
        _check_like("the factory's params", params, params0, "nnx.Param variables")
        return params, rest

    def rng_state(key: jax.Array) -> dict[str, Any]:
        flat: dict[tuple[Any, ...], jax.Array] = {}
        for i, (path, shape, is_key) in enumerate(rng_leaves):
            k = jax.random.fold_in(key, i)
            flat[path] = (
                (jax.random.split(k, shape) if shape else k)
                if is_key
                else jnp.zeros(shape, jnp.uint32)
            )
        state: dict[str, Any] = unflatten_dict(flat)
        return state

    def apply_fn(
        params: Any,
        model_state: Any,
        x: Any,
        *,
        train: bool,
        key: jax.Array | int | None = None,
    ) -> tuple[Any, Any]:
        train, key = _call_args(train, key)
        x = _inputs(x)
        if key is None:
            if train and needs_key:
                raise ValueError(
                    "this model uses randomness (it has RNG streams, e.g. for Dropout): "
                    "apply(..., train=True) needs a key"
                )
            key = jax.random.key(0)  # eval mode: a fixed key, so eval is deterministic
        _check_like("params", params, params0, "nnx.Param variables")
        _check_like("model_state", model_state, rest0, "non-Param variables")
        stream_key, call_key = jax.random.split(key)
        module = nnx.merge(
            graph_train if train else graph_eval, params, model_state, rng_state(stream_key)
        )
        kwargs: dict[str, Any] = dict(modes[train])
        if takes_rngs:
            kwargs["rngs"] = nnx.Rngs(call_key)
        try:
            logits = module(x, **kwargs)
        except Exception as err:  # re-raised as is unless x's shape is the cause
            _explain_input(err, x, sample)
            raise
        if not train:
            return logits, model_state
        nnx.pop(module, nnx.Intermediate)
        new_state = nnx.to_pure_dict(nnx.state(module, nnx.Not(nnx.Any(nnx.Param, nnx.RngState))))
        if jax.tree.structure(new_state) != rest_tree:  # type: ignore[operator]  # no PyTreeDef stub
            raise ValueError(
                "the nnx module created new variables during __call__; from_flax needs "
                "every variable to exist after construction"
            )
        return logits, new_state

    abstract = jax.eval_shape(init_fn, jax.random.key(0))
    for train in (False, True):
        try:
            jax.eval_shape(
                functools.partial(apply_fn, train=train, key=jax.random.key(0)), *abstract, sample
            )
        except Exception as err:  # the module cannot take sample_input: say so now
            raise ValueError(
                f"from_flax: the nnx module {type(template).__name__} fails on sample_input "
                f"of shape {tuple(sample.shape)} (train={train}): {err}"
            ) from err
    return Model(init_fn, apply_fn)
