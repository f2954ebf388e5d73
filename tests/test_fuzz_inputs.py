"""Property-based tests (hypothesis) of the readers of user input: the CSV and NPZ data readers
and the experiment-file parser. Whatever the bytes, only rnntune's own errors escape (each is
printed as one `Error:` line by the CLI), and whatever the experiment file `init` accepts, a
worker can build its pruner and its search space.

Settings: FUZZ_SETTINGS below (max_examples per test, no deadline: the machine is shared).
"""

from __future__ import annotations

import io
import string
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rnntune import config as config_mod
from rnntune import data as data_mod
from rnntune.exceptions import RnntuneError

FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: a failure here is reproducible
)


def _only_our_errors(fn, *args):  # noqa: ANN001, ANN202
    try:
        return fn(*args)
    except RnntuneError as e:
        assert str(e).strip(), "an error without a message"
        return None


# -- CSV -----------------------------------------------------------------------------------
CELL = st.one_of(
    st.integers(-5, 5).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "inf", "normal", "Abnormal", "1", "0", " 3 ", '"', '""', "#",
                     "1e400", "-0", "x,y", "é", "\x00", "\ufeff", "\r"]),
    st.text(max_size=6),
)  # fmt: skip
COLUMN = st.sampled_from(["sequence_id", "t", "label", "x", "y", "x", "", "é"])


@st.composite
def csv_text(draw: st.DrawFn) -> str:
    header = draw(st.lists(COLUMN, min_size=0, max_size=6))
    if draw(st.booleans()):  # mostly well-formed headers, so the parsing goes deep
        header = [
            "sequence_id",
            "t",
            *draw(st.lists(st.sampled_from(["x", "y", "z"]), max_size=3, unique=True)),
            "label",
        ]
    rows = draw(st.lists(st.lists(CELL, min_size=0, max_size=len(header) + 1), max_size=12))
    if draw(st.booleans()):  # a regular grid of sequences, sometimes corrupted
        n, t = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        feats = len(header) - 3
        rows = [
            [
                str(i),
                str(j),
                *[str(draw(CELL)) if draw(st.booleans()) else "0.5"] * max(feats, 0),
                draw(st.sampled_from(["normal", "abnormal", "0", "1", "x"])),
            ]
            for i in range(n)
            for j in range(t)
        ]
    return "\n".join(",".join(r) for r in [header, *rows]) + draw(
        st.sampled_from(["", "\n", "\r\n"])
    )


@FUZZ_SETTINGS
@given(text=csv_text())
def test_csv_reader_raises_only_our_errors(tmp_path: Path, text: str) -> None:
    p = tmp_path / "f.csv"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    _only_our_errors(data_mod.load_dataset, f"csv:{p}")


@FUZZ_SETTINGS
@given(blob=st.binary(max_size=400))
def test_csv_reader_on_arbitrary_bytes(tmp_path: Path, blob: bytes) -> None:
    p = tmp_path / "b.csv"
    p.write_bytes(b"sequence_id,t,x,label\n" + blob)
    _only_our_errors(data_mod.load_dataset, f"csv:{p}")


# -- NPZ -----------------------------------------------------------------------------------
DTYPES = st.sampled_from(
    ["float32", "float64", "int8", "int64", "uint8", "bool", "complex64", "U7", "S7", "float16"]
)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=4)))
    dtype = np.dtype(draw(DTYPES))
    size = int(np.prod(shape)) if shape else 1
    if dtype.kind in "US":
        words = draw(
            st.lists(
                st.sampled_from(["normal", "abnormal", "0", "1", "x", ""]),
                min_size=size,
                max_size=size,
            )
        )
        a = np.array(words, dtype="U8").reshape(shape)
        if dtype.kind == "S":
            a = np.char.encode(a, "utf-8")
            if draw(st.booleans()) and a.size:
                a = a.astype("S8")
                a.flat[0] = draw(st.binary(min_size=1, max_size=8))  # not always UTF-8
        return a
    vals = draw(
        st.lists(
            st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=size, max_size=size
        )
    )
    with np.errstate(all="ignore"):
        return np.array(vals, dtype=np.float64).reshape(shape).astype(dtype)


@FUZZ_SETTINGS
@given(
    X=arrays(), y=arrays(), keys=st.sampled_from([("X", "y"), ("X",), ("x", "y"), ("X", "y", "z")])
)
def test_npz_reader_raises_only_our_errors(tmp_path: Path, X: np.ndarray, y: np.ndarray, keys):  # noqa: ANN001
    arrays_by_key = dict(zip(keys, (X, y, X), strict=False))
    p = tmp_path / "d.npz"
    np.savez(p, **arrays_by_key)
    _only_our_errors(data_mod.load_dataset, f"npz:{p}")


@FUZZ_SETTINGS
@given(blob=st.binary(max_size=600), member=st.booleans())
def test_npz_reader_on_arbitrary_bytes(tmp_path: Path, blob: bytes, member: bool) -> None:
    p = tmp_path / "b.npz"
    if member:  # a real zip whose members are garbage .npy files
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("X.npy", blob)
            z.writestr("y.npy", blob[::-1])
        p.write_bytes(buf.getvalue())
    else:
        p.write_bytes(blob)
    _only_our_errors(data_mod.load_dataset, f"npz:{p}")


# -- the experiment file ---------------------------------------------------------------------
SCALAR = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=string.printable, max_size=8),
    st.sampled_from(["gru", "lstm", "rnn", "median", "percentile", "hyperband", "none",
                     "categorical", "float", "int", "macro_f1", "synthetic"]),
)  # fmt: skip
VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=4), max_leaves=6)
EXP_KEYS = st.sampled_from([*config_mod.OPTION_TYPES, "families", "bogus"])
PRUNER_KEYS = st.sampled_from(["type", "n_startup_trials", "n_warmup_steps", "percentile", "x"])
PARAMS = st.sampled_from([*config_mod.TUNABLE, "momentum"])
SPEC_KEYS = st.sampled_from(["type", "low", "high", "log", "step", "choices", "q"])


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return (
            '"' + "".join(c if c.isalnum() or c in " ._-:" else f"\\u{ord(c):04x}" for c in v) + '"'
        )
    assert isinstance(v, list)
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


@st.composite
def experiment_file(draw: st.DrawFn) -> str:
    out = []
    if draw(st.booleans()):
        out.append("[experiment]")
        for k, v in draw(st.dictionaries(EXP_KEYS, VALUE, max_size=4)).items():
            out.append(f"{k} = {_toml_value(v)}")
    if draw(st.booleans()):
        out.append("[pruner]")
        for k, v in draw(st.dictionaries(PRUNER_KEYS, VALUE, max_size=4)).items():
            out.append(f"{k} = {_toml_value(v)}")
    for param, spec in draw(
        st.dictionaries(PARAMS, st.dictionaries(SPEC_KEYS, VALUE, max_size=5), max_size=3)
    ).items():
        out.append(f"[search_space.{param}]")
        for k, v in spec.items():
            out.append(f"{k} = {_toml_value(v)}")
    if draw(st.integers(0, 9)) == 0:
        out.append(draw(st.sampled_from(["search_space = 5", "pruner = 1", "[other]", "x = ["])))
    return "\n".join(out) + "\n"


NEAR = {  # values near the edges of what is valid, so that many files are accepted
    "int": st.one_of(st.integers(-2, 20), st.sampled_from([2_000_000, 2_000_001, 10**12])),
    "float": st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 1e-4, 0.01, 1.0, 150.0])),
    "bool": st.booleans(),
}


def _biased(valid: st.SearchStrategy, edge: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly valid values, sometimes an edge case: so that many whole files are accepted."""
    return st.integers(0, 9).flatmap(lambda k: valid if k < 8 else edge)


@st.composite
def plausible_experiment_file(draw: st.DrawFn) -> str:
    near = st.one_of(NEAR["int"], NEAR["float"], NEAR["bool"])
    out = ["[experiment]"]
    for k in draw(
        st.lists(
            st.sampled_from(
                ["trials", "repeats", "max_epochs", "seed", "patience", "tpe_startup_trials"]
            ),
            unique=True,
            max_size=3,
        )
    ):
        out.append(f"{k} = {_toml_value(draw(_biased(st.integers(1, 50), near)))}")
    if draw(st.booleans()):
        fams = draw(
            _biased(
                st.lists(
                    st.sampled_from(["rnn", "gru", "lstm"]), min_size=1, max_size=3, unique=True
                ),
                st.lists(st.sampled_from(["rnn", "gru", "x"]), max_size=3),
            )
        )
        out.append(f"families = {_toml_value(fams)}")
    out.append("[pruner]")
    out.append(f"type = {_toml_value(draw(st.sampled_from(config_mod.PRUNERS)))}")
    for k, valid in (
        ("n_startup_trials", st.integers(0, 5)),
        ("n_warmup_steps", st.integers(0, 5)),
        ("percentile", st.floats(0, 100)),
    ):
        if draw(st.booleans()):
            out.append(f"{k} = {_toml_value(draw(_biased(valid, near)))}")
    for param in draw(st.lists(st.sampled_from(list(config_mod.TUNABLE)), unique=True, max_size=3)):
        kind = draw(st.sampled_from(config_mod.TUNABLE[param]))
        out.append(f"[search_space.{param}]")
        out.append(f"type = {_toml_value(kind)}")
        ints = param in ("hidden_size", "batch_size", "num_layers")
        if kind == "categorical":
            valid = st.lists(
                st.integers(1, 128) if ints else st.floats(0.0001, 0.9),
                min_size=1,
                max_size=3,
                unique=True,
            )
            out.append(f"choices = {_toml_value(draw(_biased(valid, st.lists(near, max_size=3))))}")
            continue
        a, b = sorted(
            draw(
                st.lists(
                    st.integers(1, 128) if ints else st.floats(0.0001, 0.9), min_size=2, max_size=2
                )
            )
        )
        low, high = draw(_biased(st.just((a, b)), st.tuples(near, near)))
        out += [f"low = {_toml_value(low)}", f"high = {_toml_value(high)}"]
        log = draw(st.booleans())
        if draw(st.booleans()):
            out.append(f"log = {_toml_value(log)}")
        if draw(st.booleans()) or not log:
            step = draw(_biased(st.integers(1, 4) if ints else st.floats(0.001, 0.1), near))
            if not log or draw(st.integers(0, 4)) == 0:
                out.append(f"step = {_toml_value(step)}")
    return "\n".join(out) + "\n"


@settings(FUZZ_SETTINGS, max_examples=400)
@given(text=st.one_of(experiment_file(), plausible_experiment_file()))
def test_experiment_file_raises_only_config_errors(tmp_path: Path, text: str) -> None:
    """Parsed and built like `init` does; anything accepted builds its pruner and space."""
    p = tmp_path / "exp.toml"
    p.write_text(text, encoding="utf-8")
    try:
        explicit = config_mod.read_file(p)
        cfg = config_mod.build({**explicit, "name": explicit.get("name", "fuzz")})
    except config_mod.ConfigError as e:
        assert str(e).strip()
        event("refused")
        return
    event("accepted")
    from rnntune import tuning

    tuning.distributions(cfg.search_space)
    tuning.make_pruner(cfg)
    # What is stored is read back the same (workers rebuild it from the row).
    again = config_mod.ExperimentConfig.from_dict(cfg.to_dict())
    assert again.digest() == cfg.digest()


@FUZZ_SETTINGS
@given(blob=st.binary(max_size=300))
def test_experiment_file_on_arbitrary_bytes(tmp_path: Path, blob: bytes) -> None:
    p = tmp_path / "exp.toml"
    p.write_bytes(blob)
    try:
        config_mod.build({**config_mod.read_file(p), "name": "fuzz"})
    except config_mod.ConfigError:
        pass


@pytest.mark.parametrize("spec", ["synthetic:n=1e400", "synthetic:seed=-0", "npz:", "csv: "])
def test_data_spec_edge_cases(spec: str) -> None:
    _only_our_errors(data_mod.load_dataset, spec)
