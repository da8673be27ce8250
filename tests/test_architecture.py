"""The package's shape: two halves, one kernel, short functions, private uses in one place."""

import ast
import importlib
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "harmonic_tf"
COMPAT = PACKAGE / "keras" / "_compat.py"
MAX_FUNCTION_LINES = 60


def _sources(folder: pathlib.Path = PACKAGE):
    return sorted(folder.rglob("*.py"))


def test_ops_imports_no_keras():
    # Read, not run: `import tensorflow` itself loads Keras, so only the imports tell.
    allowed = ("tensorflow", "numpy", "harmonic_tf.ops", "__future__")
    for path in _sources(PACKAGE / "ops"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                ok = name.startswith(allowed) or root in sys.stdlib_module_names
                assert ok, f"{path.relative_to(ROOT)} imports {name}"


def test_keras_half_uses_only_the_public_ops():
    # Every name the Keras half takes from the math half is in `ops.__all__`, imported from
    # `harmonic_tf.ops` itself (no submodule reached into).
    from harmonic_tf import ops

    for path in _sources(PACKAGE / "keras"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "harmonic_tf.ops"
            ):
                assert node.module == "harmonic_tf.ops", (path, node.module)
                outside = [a.name for a in node.names if a.name not in ops.__all__]
                assert not outside, (path.relative_to(ROOT), outside)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("harmonic_tf.ops.") for a in node.names), path


TODAY = [
    "HarmonicAccuracy", "HarmonicPerplexity", "HarmonicLMHead", "HarmonicLoss", "HarmonicModel",
    "HarmonicTraining", "LogUniformSampler", "SampledOptions", "Sampler", "UniformSampler",
    "UnigramSampler", "default_eta", "harmonic_logits", "harmonic_loss", "harmonic_loss_approx",
    "label_counts", "sampled_harmonic_loss",
]  # fmt: skip


def test_public_names_of_the_previous_layout_still_import():
    import harmonic_tf as ht

    for name in TODAY:
        assert name in ht.__all__ and getattr(ht, name) is not None, name
    for name in ht.__all__:  # constants (DENSE_MAX_BYTES) have no module
        module = getattr(getattr(ht, name), "__module__", "harmonic_tf.ops")
        assert module.startswith(("harmonic_tf.ops", "harmonic_tf.keras")), (name, module)
    pytest.importorskip("keras_hub")
    old = importlib.import_module("harmonic_tf.hub")
    new = importlib.import_module("harmonic_tf.keras.hub")
    assert old.HarmonicCausalLM is new.HarmonicCausalLM


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _code_lines(node) -> int:
    """Lines of a function without its docstring."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
        lines -= first.end_lineno - first.lineno + 1
    return lines


@pytest.mark.parametrize("folder", ["harmonic_tf", "examples", "benchmarks", "tests"])
def test_no_function_over_60_lines(folder):
    long = [
        f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({_code_lines(fn)} lines)"
        for path in _sources(ROOT / folder)
        for fn in _functions(ast.parse(path.read_text()))
        if _code_lines(fn) > MAX_FUNCTION_LINES
    ]
    assert not long, long


def test_custom_gradient_sequence_is_written_once():
    # The forward/backward sequence (custom gradient, softplus margin, true pull) lives in the
    # kernel; every path reaches it through ops/_kernel.py. The one other custom gradient is the
    # cosine distance's row normalisation (ops/cosine.py), which no loss sequence is part of.
    for path in _sources():
        text = path.read_text()
        if path.name == "_kernel.py":
            assert "tf.custom_gradient" in text and "tf.math.softplus" in text
            continue
        markers = ("tf.math.softplus", "sigmoid(margin)")
        if path.name != "cosine.py":
            markers += ("tf.custom_gradient",)
        for marker in markers:
            assert marker not in text, (path, marker)


@pytest.mark.parametrize(
    "options",
    [
        dict(in_batch_negatives=0, center_gradient="indexed_slices"),
        dict(negatives="per_example", in_batch_negatives=0, center_gradient="indexed_slices"),
        dict(in_batch_negatives="all", center_rows=4, center_control_variate=True),
        dict(in_batch_negatives=4, center_rows=4, center_control_variate=False),
    ],
    ids=["shared", "per_example", "rows_control_variate", "rows"],
)
def test_every_gradient_term_comes_from_the_kernel_formulas(options, monkeypatch):
    """With the kernel's two coefficient formulas (other classes', true class's) made to return
    zeros, every path's gradients are exactly zero: no path derives a term of its own. (Before
    this test the sampled rows re-derived the own-label push and the exact pull; both failed.)"""
    import tensorflow as tf

    import harmonic_tf as ht
    from harmonic_tf.ops import _kernel

    x = tf.random.stateless_normal([16, 8], [1, 2])
    w = tf.random.stateless_normal([64, 8], [1, 3])
    y = tf.random.stateless_uniform([16], [1, 4], maxval=64, dtype=tf.int32)
    opts = ht.SampledOptions(k=8, sampler="uniform", **options)

    def grads():
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = ht.sampled_harmonic_loss(x, w, y, opts, eta=4.0, seed=0)
            exact = ht.harmonic_loss(x, w, y, eta=4.0, chunk_size=16, path="two_pass")
        return [tf.convert_to_tensor(g) for g in tape.gradient([loss, exact], [x, w])]

    assert all(float(tf.reduce_max(tf.abs(g))) > 1e-3 for g in grads())
    monkeypatch.setattr(_kernel, "coefficients", lambda z, *a, **k: tf.zeros_like(z))
    monkeypatch.setattr(_kernel, "true_pull", lambda weight, d2, diff, *a: tf.zeros_like(diff))
    for g in grads():
        assert float(tf.reduce_max(tf.abs(g))) == 0.0


PRIVATE = re.compile(
    r"keras\.src|keras_hub\.src|tensorflow\.python|\b(?!self\b|cls\b)[a-z]\w*\._[a-z]"
)


def test_private_apis_only_in_compat():
    found = []
    for path in _sources():
        if path == COMPAT:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            for match in PRIVATE.finditer(code):
                owner = match.group(0).split(".")[0]
                # The package's own private modules (ops._kernel) are not another
                # library's internals.
                if owner in {"_kernel", "_compat", "ops", "harmonic_tf"}:
                    continue
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, found


def test_tested_major_versions():
    from harmonic_tf.keras import _compat

    problems = _compat.untested_versions()
    assert not problems, "\n".join(problems)


def _docstrings():
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node, clean=True)
                if text and ">>>" in text:
                    yield f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 1)}", text


def test_docstring_examples_sit_in_an_examples_section():
    # The API pages (mkdocstrings, Google style) render `>>>` lines as code only inside an
    # indented "Examples:" section; elsewhere Markdown reads them as nested quotes (seen in the
    # built site).
    misplaced = []
    for where, text in _docstrings():
        section = None
        for line in text.splitlines():
            indent = len(line) - len(line.lstrip())
            if line.strip().endswith(":") and not line.lstrip().startswith(">>>"):
                section = (line.strip(), indent)
            if line.lstrip().startswith(">>>"):
                ok = section is not None and section[0] == "Examples:" and indent > section[1]
                if not ok:
                    misplaced.append(f"{where}: {line.strip()}")
                    break
    assert not misplaced, misplaced
