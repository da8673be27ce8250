"""The manual's tables of defaults against the code: every field of ``SampledOptions`` and
``ExactOptions`` is in its page's table with the default the dataclass gives, so the two cannot
drift."""

import dataclasses
import re
from pathlib import Path

import harmonic_tf as ht

DOCS = Path(__file__).parent.parent / "docs"


def _table(page: str, header: str) -> dict[str, str]:
    """``{name: default cell}`` of the markdown table in ``page`` whose header starts ``header``."""
    lines = (DOCS / page).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1]
    return rows


def _literal(cell: str) -> str:
    """The value a default cell starts with: ``256``, ``"shared"``, ``True``."""
    return re.match(r'`?("[^"]*"|[\w.]+)', cell).group(1).strip('"')


def test_sampled_options_table_lists_every_field_with_its_default():
    documented = _table("sampled.md", "| field | default |")
    resolved = ht.SampledOptions()  # None fields resolve to their center_gradient="rows" values
    fields = {f.name for f in dataclasses.fields(ht.SampledOptions)}
    assert set(documented) == fields
    for name in fields:
        assert _literal(documented[name]) == str(getattr(resolved, name)), name


def test_exact_options_table_lists_every_field_with_its_default():
    documented = _table("keras.md", "| field | default |")
    fields = {f.name: f.default for f in dataclasses.fields(ht.ExactOptions)}
    assert set(documented) == set(fields)
    for name, default in fields.items():
        assert _literal(documented[name]) == str(default), name


def test_default_exponents_stated_in_conventions_are_the_codes():
    text = (DOCS / "conventions.md").read_text()
    euclidean = re.search(r"`ht\.default_eta\(D\) = 2 D`", text)
    cosine = re.search(r'`ht\.default_eta\(D, "cosine"\) = ([\d.]+)`', text)
    assert euclidean and ht.default_eta(7) == 14.0
    assert cosine and float(cosine.group(1)) == ht.default_eta(7, "cosine")
    row = re.search(
        r'\*\*this package, `distance="cosine"`, `eta=None`\*\* \|.*\| \*\*([\d.]+)\*\* \|', text
    )
    assert row and float(row.group(1)) == ht.default_eta(128, "cosine")


def test_exact_fallback_stated_in_the_manual_is_the_codes():
    """``docs/sampled.md``'s fallback example and its "samples from about V = 1,700 up", and
    ``docs/keras.md``'s signature, against the code."""
    text = (DOCS / "sampled.md").read_text()
    options = ht.SampledOptions()
    assert "options.faster_than_exact(2048, 3000, 128)  # True" in text
    assert options.faster_than_exact(2048, 3000, 128)
    assert "options.faster_than_exact(2048, 1000, 128)  # False" in text
    assert not options.faster_than_exact(2048, 1000, 128)
    stated = int(re.search(r"samples from about `V = ([\d,]+)` up", text)[1].replace(",", ""))
    first = next(v for v in range(2, 10_000) if options.faster_than_exact(2048, v, 128))
    assert abs(first - stated) <= 50, first
    assert ht.HarmonicLoss().exact_fallback is True
    assert "exact_fallback=True" in (DOCS / "keras.md").read_text()


def test_main_job_learning_rates_stated_in_the_examples_page_are_the_scripts():
    import transformer_lm

    args = transformer_lm.parse_args([])
    assert "lr 3e-3 for every run" in (DOCS / "examples.md").read_text()
    assert args.lr_ce == args.lr_harmonic == 3e-3
