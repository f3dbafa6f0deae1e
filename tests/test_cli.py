"""The ``purelearn`` command: every mistake on the command line is one line on stderr and
exit status 2, before any experiment runs; the compilation cache; one happy path."""

import json
import os
import re
import subprocess
import sys

import jax
import pytest

from purelearn import cli


class Ran(Exception):
    """Raised by a stand-in experiment: proof that main got past its checks."""


@pytest.fixture
def no_experiments(monkeypatch):
    """Every experiment replaced by one that records its call and stops main."""
    calls = []

    def stand_in(name):
        def run(**kwargs):
            calls.append((name, jax.config.jax_compilation_cache_dir))
            raise Ran(name)

        return run

    for name in list(cli.EXPERIMENTS):
        monkeypatch.setitem(cli.EXPERIMENTS, name, stand_in(name))
    return calls


@pytest.fixture
def jax_cache_config():
    """Restore jax's compilation-cache settings that main changes."""
    names = [
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    ]
    saved = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    for n, v in saved.items():
        jax.config.update(n, v)


def user_error(capsys, argv):
    """Run main; it must exit with status 2 and print exactly one line to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("purelearn: error: "), err
    return lines[0]


# -- --out -------------------------------------------------------------------------------


def test_out_naming_an_existing_file(tmp_path, capsys, no_experiments):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    line = user_error(capsys, ["paths", "--out", str(target)])
    assert str(target) in line and "existing file" in line
    assert target.read_text() == "keep me" and not no_experiments


def test_out_in_an_unwritable_place(tmp_path, capsys, no_experiments):
    # Under a file: no directory can be made there (true even for root, unlike chmod).
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "out"
    line = user_error(capsys, ["paths", "--out", str(target)])
    assert str(target) in line and "not a writable directory" in line
    assert not no_experiments


def test_out_is_created_and_probed_before_any_experiment(tmp_path, no_experiments):
    target = tmp_path / "a" / "b"
    with pytest.raises(Ran):
        cli.main(["paths", "--out", str(target), "--no-compile-cache"])
    assert target.is_dir() and list(target.iterdir()) == []  # the probe file is gone
    assert [name for name, _ in no_experiments] == ["paths"]


# -- --data ------------------------------------------------------------------------------


def test_data_naming_a_missing_directory(tmp_path, capsys, no_experiments):
    missing = tmp_path / "missing"
    out = tmp_path / "out"
    line = user_error(capsys, ["tour", "--data", str(missing), "--out", str(out)])
    assert str(missing) in line and "existing directory" in line
    assert not no_experiments  # tour stopped before its first experiment
    assert not out.exists()  # and left nothing behind


def test_data_directory_without_idx_files(tmp_path, capsys, no_experiments):
    line = user_error(capsys, ["dropout", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "missing MNIST IDX files" in line and "train-images-idx3-ubyte" in line
    assert not no_experiments


def test_data_directory_with_corrupt_idx_files(tmp_path, capsys, no_experiments):
    for name in ("train-images", "train-labels", "t10k-images", "t10k-labels"):
        suffix = "idx3-ubyte" if "images" in name else "idx1-ubyte"
        (tmp_path / f"{name}-{suffix}").write_bytes(b"not an idx file")
    line = user_error(capsys, ["tour", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "not an IDX file" in line
    assert not no_experiments


# -- --seed and the experiment name -------------------------------------------------------


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**64), "1.5", "abc"])
def test_bad_seeds(tmp_path, capsys, no_experiments, seed):
    line = user_error(capsys, ["paths", "--seed", seed, "--out", str(tmp_path)])
    assert "--seed" in line and seed in line
    assert not no_experiments


@pytest.mark.parametrize("seed", ["0", str(cli.MAX_SEED)])
def test_seeds_at_the_ends_of_the_range_are_accepted(tmp_path, no_experiments, seed):
    assert cli.MAX_SEED == 2**32 - 1
    with pytest.raises(Ran):
        cli.main(["paths", "--seed", seed, "--out", str(tmp_path), "--no-compile-cache"])


def test_seeds_beyond_32_bits_would_repeat_smaller_ones():
    """Why MAX_SEED: jax.random.key keeps only the low 32 bits of a seed."""
    key_data = jax.random.key_data
    assert (key_data(jax.random.key(2**32)) == key_data(jax.random.key(0))).all()
    assert not (key_data(jax.random.key(cli.MAX_SEED)) == key_data(jax.random.key(0))).all()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["batchnorms"], "invalid choice: 'batchnorms'"),
        ([], "required: experiment"),
        (["paths", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_experiment_names_and_options(capsys, no_experiments, argv, words):
    assert words in user_error(capsys, argv)
    assert not no_experiments


@pytest.mark.parametrize(
    "name, suggested",
    [
        ("optimiser", ["optimizers"]),
        ("weight_decay", ["weight-decay"]),  # "_" read as "-"
        ("Weight_Decay", ["weight-decay"]),
        ("batchnorms", ["batchnorm"]),
        ("serch", ["search"]),
        ("tours", ["tour"]),
    ],
)
def test_a_near_miss_experiment_name_suggests_the_closest(
    tmp_path, capsys, no_experiments, name, suggested
):
    line = user_error(capsys, [name, "--out", str(tmp_path / "out")])
    assert f"invalid choice: {name!r}" in line
    assert "did you mean " + " or ".join(map(repr, suggested)) + "?" in line
    assert not no_experiments and not (tmp_path / "out").exists()  # before anything ran


def test_a_far_miss_experiment_name_lists_every_name(capsys, no_experiments):
    line = user_error(capsys, ["xyzzy"])
    assert "did you mean" not in line
    assert all(name in line for name in [*cli.EXPERIMENTS, "tour"])
    assert not no_experiments


def test_every_experiment_name_is_still_accepted(tmp_path, no_experiments):
    for name in cli.EXPERIMENTS:
        with pytest.raises(Ran, match=name):
            cli.main([name, "--out", str(tmp_path), "--no-compile-cache"])
    assert [n for n, _ in no_experiments] == list(cli.EXPERIMENTS)


# -- --help -----------------------------------------------------------------------------------


def _help_texts():
    """Every option's help as printed, and as one string per option (wrapping undone)."""
    parser = cli._parser()
    printed = " ".join(parser.format_help().split())
    return printed, [" ".join(a.help.split()) for a in parser._actions if a.help]


_DOUBLED_DEFAULT = re.compile(r"default: ([^,;)]+), with --quick \1(?=[;)])")


def test_help_states_a_default_once_when_quick_does_not_change_it():
    assert cli.DEFAULT_SEEDS == cli.QUICK_SEEDS  # the case the user met
    printed, helps = _help_texts()
    assert helps, "no option help found"
    for text in [printed, *helps]:
        assert not _DOUBLED_DEFAULT.search(text), text
        assert "with --quick" not in text, text
    assert f"(default: {cli.DEFAULT_SEEDS}; 1 is the single run of --seed)" in printed


def test_help_names_the_quick_default_where_it_differs(monkeypatch):
    monkeypatch.setattr(cli, "QUICK_SEEDS", cli.DEFAULT_SEEDS + 3)
    printed, helps = _help_texts()
    want = f"(default: {cli.DEFAULT_SEEDS}, with --quick {cli.DEFAULT_SEEDS + 3}; 1 is"
    assert want in printed and any(want in h for h in helps)
    assert not any(_DOUBLED_DEFAULT.search(t) for t in [printed, *helps])


@pytest.mark.parametrize(
    "default, quick, text",
    [(2, 2, "default: 2"), (2, 1, "default: 2, with --quick 1"), ("a", "a", "default: a")],
)
def test_default_help(default, quick, text):
    assert cli._default_help(default, quick) == text


def test_help_through_main_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--seeds" in out and not _DOUBLED_DEFAULT.search(out)


# -- the compilation cache --------------------------------------------------------------


def test_compile_cache_is_on_before_the_first_experiment(
    tmp_path, monkeypatch, no_experiments, jax_cache_config
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PURELEARN_COMPILE_CACHE", str(cache))
    with pytest.raises(Ran):
        cli.main(["init", "--out", str(tmp_path / "out")])
    assert no_experiments == [("init", str(cache))]
    assert cache.is_dir()


def test_no_compile_cache_leaves_it_off(tmp_path, monkeypatch, no_experiments, jax_cache_config):
    monkeypatch.setenv("PURELEARN_COMPILE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(Ran):
        cli.main(["init", "--out", str(tmp_path / "out"), "--no-compile-cache"])
    assert no_experiments == [("init", None)]
    assert not (tmp_path / "cache").exists()


def test_an_unusable_compile_cache_is_a_warning_not_a_failure(
    tmp_path, monkeypatch, capsys, no_experiments, jax_cache_config
):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("PURELEARN_COMPILE_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(Ran):
        cli.main(["init", "--out", str(tmp_path / "out")])
    assert no_experiments == [("init", None)]
    assert "warning: no compilation cache" in capsys.readouterr().err


# -- as a process ---------------------------------------------------------------------------


def _run(*args, tmp_path):
    env = dict(os.environ, PURELEARN_COMPILE_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "purelearn.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )


def test_as_a_process_a_user_error_is_one_line_and_status_2(tmp_path):
    """No traceback: tour with a missing --data stops before its first experiment."""
    proc = _run("tour", "--data", str(tmp_path / "missing"), tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"purelearn: error: --data {str(tmp_path / 'missing')!r} is neither 'auto', "
        "'embedded' nor an existing directory"
    ]
    assert proc.stdout == ""
    assert not (tmp_path / "purelearn-out").exists()  # nothing was run or written


# -- the happy path ---------------------------------------------------------------------------


def test_paths_quick_still_runs_and_writes_its_numbers_and_figure(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["paths", "--quick", "--out", str(out), "--no-compile-cache"]) == 0
    result = json.loads((out / "paths.json").read_text())
    assert result["quick"] is True
    assert set(result["final"]) >= {"SGD", "Momentum", "AdaGrad", "Adam"}
    assert (out / "paths.png").stat().st_size > 0
    assert "wrote" in capsys.readouterr().out


# -- --seeds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seeds", ["0", "-2", "abc", "1.5"])
def test_bad_seed_counts(tmp_path, capsys, no_experiments, seeds):
    line = user_error(capsys, ["paths", "--seeds", seeds, "--out", str(tmp_path)])
    assert "--seeds" in line and seeds in line
    assert not no_experiments


def test_seeds_running_past_32_bits(tmp_path, capsys, no_experiments):
    line = user_error(
        capsys, ["paths", "--seed", str(cli.MAX_SEED), "--seeds", "2", "--out", str(tmp_path)]
    )
    assert "--seeds 2" in line and "2**32 - 1" in line
    assert not no_experiments


@pytest.mark.parametrize(
    "argv, seeds",
    [
        ([], cli.DEFAULT_SEEDS),
        (["--quick"], cli.QUICK_SEEDS),
        (["--seeds", "5"], 5),
        (["--quick", "--seeds", "1"], 1),
    ],
)
def test_seeds_reach_the_experiment(tmp_path, monkeypatch, argv, seeds):
    got = []

    def run(**kwargs):
        got.append(kwargs)
        raise Ran("paths")

    monkeypatch.setitem(cli.EXPERIMENTS, "paths", run)
    with pytest.raises(Ran):
        cli.main(["paths", *argv, "--seed", "7", "--out", str(tmp_path), "--no-compile-cache"])
    assert got[0]["seeds"] == seeds and got[0]["seed"] == 7


def test_paths_json_records_the_seeds(tmp_path):
    out = tmp_path / "out"
    assert (
        cli.main(["paths", "--seeds", "3", "--seed", "2", "--out", str(out), "--no-compile-cache"])
        == 0
    )
    result = json.loads((out / "paths.json").read_text())
    assert result["seeds"] == [2, 3, 4] and result["quick"] is False


def test_the_default_seed_count_stops_at_the_last_seed(tmp_path, monkeypatch):
    got = []

    def run(**kwargs):
        got.append(kwargs)
        raise Ran("paths")

    monkeypatch.setitem(cli.EXPERIMENTS, "paths", run)
    with pytest.raises(Ran):
        cli.main(
            ["paths", "--seed", str(cli.MAX_SEED), "--out", str(tmp_path), "--no-compile-cache"]
        )
    assert got[0]["seeds"] == 1
