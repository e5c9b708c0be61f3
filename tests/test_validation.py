"""A bad study never starts: every malformed study file gets its own clear message."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from orchestrator import Factor, Study, StudyError, StudyLoadError, Variant, load_study

GOOD = dict(
    name="ok",
    workload="synthetic",
    factors='[Factor("optimizer", ["sgd", "adam"]), Factor("lr", [0.1, 0.01])]',
    metrics='{"response": "minimize"}',
    variants='{"smoke": Variant(), "full": Variant()}',
)


def study_source(**changes: str) -> str:
    fields = {**GOOD, **changes}
    body = ",\n    ".join(f"{k}={v if k not in ('name', 'workload') else repr(v)}" for k, v in fields.items() if v is not None)
    return (
        "from orchestrator import Factor, Fractional, PlackettBurman, Study, Variant, Metric, Resources\n"
        f"study = Study(\n    {body},\n)\n"
    )


# (id, study file source, regex the message must match)
CASES = [
    ("syntax", "from orchestrator import Study\nstudy = Study(name='x',\n", r"line \d+: invalid Python syntax"),
    ("no-study", "x = 1\n", r"defines no module-level `study`\. Add `study = Study\(\.\.\.\)`"),
    ("misnamed-study", study_source().replace("study = Study", "my_study = Study"), r"defines a Study named 'my_study': rename it to 'study'"),
    ("wrong-type", "study = {'name': 'x'}\n", r"`study` is a dict, expected an orchestrator\.Study"),
    ("raises", "import math\nstudy = math.sqrt(-1)\n", r"line 2: the study file raised ValueError"),
    ("unknown-field", study_source(replicate="3"), r'replicate: expected a Study field, found unknown field \'replicate\'\. Did you mean "replicates"\?'),
    ("bad-name", study_source(name="my study!"), r"name: expected a name of letters, digits"),
    ("unknown-workload", study_source(workload="digitz"), r'workload: expected a built-in workload.*Did you mean "digits"\?'),
    ("bad-reference", study_source(workload="mypkg.mod:"), r"workload: expected 'package\.module:function'"),
    ("no-factors", study_source(factors="[]"), r"factors: expected a non-empty list of Factor"),
    ("empty-levels", study_source(factors='[Factor("lr", [])]'), r"factors\['lr'\]\.levels: expected a non-empty list of levels"),
    ("duplicate-factor", study_source(factors='[Factor("lr", [1, 2]), Factor("lr", [3])]'), r"factors\['lr'\]: expected each factor declared once"),
    ("duplicate-level", study_source(factors='[Factor("lr", [0.1, 0.1])]'), r"expected distinct levels, found repeated level\(s\) 0\.1"),
    ("bad-level-type", study_source(factors='[Factor("lr", [None, [1]])]'), r"levels\[0\]: expected a string, number or boolean, found None"),
    ("bad-factor-name", study_source(factors='[Factor("learning rate", [1])]'), r"factors\[0\]\.name: expected a Python identifier"),
    ("factor-typo-arg", study_source(factors='[Factor("lr", [1], nested="x")]'), r'unknown argument \'nested\'\. Did you mean "nested_in"\?'),
    ("nested-unknown-parent", study_source(factors='[Factor("optimizer", ["sgd"]), Factor("lr", {"sgd": [1]}, nested_in="optimiser")]'), r'nested_in: expected a factor declared before this one, found \'optimiser\' \(str\)\. Did you mean "optimizer"\?'),
    (
        "nested-missing-parent-level",
        study_source(factors='[Factor("optimizer", ["sgd", "adam"]), Factor("lr", {"sgd": [1]}, nested_in="optimizer")]'),
        r"expected levels for every level of 'optimizer', found none for adam",
    ),
    ("replicates-zero", study_source(replicates="0"), r"replicates: expected an integer >= 1, found 0 \(int\)"),
    ("bad-stream", study_source(seed_streams='{"init": "replicat"}'), r'seed_streams\[\'init\'\]: expected \'replicate\', \'fixed\' or an integer >= 1.*Did you mean "replicate"\?'),
    ("bad-goal", study_source(metrics='{"loss": "minimise"}'), r'metrics\[\'loss\'\]\.goal: expected \'minimize\' or \'maximize\'.*Did you mean "minimize"\?'),
    ("no-metrics", study_source(metrics="[]"), r"metrics: expected at least one Metric"),
    ("gpu-fraction", study_source(resources='{"cpus": 1, "gpus": 1.5}'), r"resources\.gpus: expected 0, a fraction below 1"),
    ("resource-typo", study_source(resources='{"cpu": 1}'), r'resources\.cpu: .*Did you mean "cpus"\?'),
    ("negative-retries", study_source(retries="-1"), r"retries: expected an integer >= 0, found -1"),
    ("missing-variants", study_source(variants='{"full": Variant()}'), r"variants: expected at least the variants 'smoke'.*Add 'smoke': Variant"),
    ("variant-unknown-factor", study_source(variants='{"smoke": Variant(levels={"l_r": [1]}), "full": Variant()}'), r'variants\[\'smoke\'\]\.levels: expected factor names, found unknown factor \'l_r\'\. Did you mean "lr"\?'),
    ("exclude-unknown-level", study_source(exclude='[{"optimizer": "adamw"}]'), r'exclude\[0\]\[\'optimizer\'\]: expected a level of \'optimizer\'.*Did you mean "adam"\?'),
    ("exclude-unknown-factor", study_source(exclude='[{"optimiser": "adam"}]'), r'exclude\[0\]: expected factor names, found unknown factor \'optimiser\'\. Did you mean "optimizer"\?'),
    ("param-is-factor", study_source(params='{"lr": 0.1}'), r"params\['lr'\]: expected a parameter that is not also a factor"),
    ("fractional-three-levels", study_source(factors='[Factor("a", [1, 2, 3]), Factor("b", [1, 2]), Factor("c", [1, 2])]', design="Fractional(resolution=3)"), r"factors\['a'\]: expected exactly two levels and no nesting"),
    ("fractional-bad-generator", study_source(factors='[Factor(n, [0, 1]) for n in "abcd"]', design='Fractional(generators=["D=AX"])'), r"design\.generators\[0\]: expected a product of distinct basic factors from ABC"),
    ("fractional-unreachable", study_source(factors='[Factor(n, [0, 1]) for n in "abcdefg"]', design="Fractional(resolution=8)"), r"The best tabled 2\^\(7-p\) design has resolution 7"),
    ("seed-negative", study_source(seed="-5"), r"seed: expected a non-negative integer"),
    ("block-unknown", study_source(block_by='"precision"'), r'block_by: expected the name of a factor, found \'precision\''),
    ("run-order", study_source(run_order='"random"'), r'run_order: .*Did you mean "randomized"\?'),
    ("unknown-precision", study_source(workload="digits", factors='[Factor("precision", ["fp32", "bfloat16"])]'), r'factors\[\'precision\'\]\.levels: expected a precision the built-in workloads know, found \'bfloat16\'\. Did you mean "bf16"\?'),
    ("unknown-optimizer-param", study_source(workload="digits", params='{"optimizer": "adamm"}'), r'params\[\'optimizer\'\]: expected an optimizer the built-in workloads know.*Did you mean "adam"'),
    ("analysis-key", study_source(analysis='{"logg": True}'), r'analysis\.logg: expected one of metric, log, spread_by, interactions.*Did you mean "log"\?'),
    ("analysis-metric", study_source(analysis='{"metric": "respons"}'), r'analysis\.metric: expected one of the study\'s metrics.*Did you mean "response"\?'),
]


@pytest.mark.parametrize(("source", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_malformed_study_file_has_its_own_message(tmp_path, source, message):
    path = tmp_path / "bad.py"
    path.write_text(source)
    with pytest.raises((StudyError, StudyLoadError), match=message):
        load_study(path)


def test_there_are_at_least_twenty_distinct_cases():
    assert len({c[2] for c in CASES}) >= 20


def test_all_problems_are_reported_together():
    with pytest.raises(StudyError) as info:
        Study(name="x y", workload="nope", factors=[], metrics=[], replicates=0, variants={})
    fields = [p.field for p in info.value.problems]
    assert fields == ["name", "workload", "factors", "replicates", "metrics", "variants"]
    assert str(info.value).startswith("study 'x y' is invalid: 6 problems")


def test_unknown_variant_is_named_with_a_suggestion():
    study = Study(name="v", workload="synthetic", factors=[Factor("a", [1])], metrics=["r"], variants={"smoke": Variant(), "full": Variant()})
    with pytest.raises(StudyError, match=r'variant: expected one of the study\'s variants, found \'smok\'\. Did you mean "smoke"\?'):
        study.with_variant("smok")


def test_a_study_is_frozen():
    study = Study(name="v", workload="synthetic", factors=[Factor("a", [1])], metrics=["r"], variants={"smoke": Variant(), "full": Variant()})
    with pytest.raises(AttributeError, match="a Study is frozen"):
        study.replicates = 3


def test_missing_study_file_suggests_existing_studies(tmp_path, monkeypatch):
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "adam_precision.py").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyLoadError, match=r'no study named \'adam_precison\'.*Did you mean "adam_precision"\?'):
        load_study("adam_precison")


def test_cli_reports_a_bad_study_with_exit_2_and_no_traceback(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(study_source(replicate="3"))
    result = subprocess.run([sys.executable, "-m", "orchestrator", "plan", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert 'Did you mean "replicates"?' in result.stderr
    assert "Traceback" not in result.stderr
    debug = subprocess.run([sys.executable, "-m", "orchestrator", "--debug", "plan", str(path)], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_cli_misuse_exits_2():
    result = subprocess.run([sys.executable, "-m", "orchestrator", "plan"], capture_output=True, text=True)
    assert result.returncode == 2 and "Missing argument 'STUDY'" in result.stderr
    result = subprocess.run([sys.executable, "-m", "orchestrator", "plan", "x.py", "--format", "yaml"], capture_output=True, text=True)
    assert result.returncode == 2 and "'yaml' is not one of" in result.stderr
