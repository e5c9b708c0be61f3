"""Tuned settings: the declaration, searches as data, selection, and the search on a real Ray Tune."""

from __future__ import annotations

import math
import sys

import pytest

from orchestrator.errors import StudyError
from orchestrator.tuning import (
    ASHA,
    Budget,
    Choice,
    ConfigurationOutcome,
    LogUniform,
    PerLevel,
    Searcher,
    SearchFailed,
    Tuning,
    Uniform,
    draw,
    plan_searches,
    search_seed,
    select,
)

LANDSCAPE = "orchestrator.workloads.tuned:landscape"
SPACE = PerLevel(
    "optimizer",
    {
        "sgd": {"lr": LogUniform(1e-3, 1.0)},
        "momentum": {"lr": LogUniform(1e-3, 1.0), "momentum": Uniform(0.5, 0.99)},
        "adam": {"lr": LogUniform(1e-4, 1e-1), "amsgrad": Choice([False, True])},
    },
)
FACTORS = {"optimizer": ["sgd", "momentum", "adam"], "model": ["linear", "mlp"]}
PARAMS = {
    "optimum_by": "optimizer",
    "optimum": {"sgd": {"lr": 0.1}, "momentum": {"lr": 0.03, "momentum": 0.9}, "adam": {"lr": 0.003, "amsgrad": True}},
    "floor": {"sgd": 0.3, "momentum": 0.2, "adam": 0.25},
    "noise": 0.02,
    "epochs": 4,
}


def searches(tuning: Tuning, *, seed: int = 7, cells=None):
    cells = cells or [(f"c{opt}", {"optimizer": opt}) for opt in ("sgd", "momentum", "adam")]
    return plan_searches(tuning, study="t", variant="smoke", study_seed=seed, cells=cells, params=PARAMS, workload=LANDSCAPE, streams=["init", "data"])


# -- the declaration -----------------------------------------------------------------------------


def test_a_test_metric_is_refused_with_the_validation_metrics_listed():
    with pytest.raises(StudyError, match=r"tuning\.select: expected a validation metric .* found 'test_loss', a test metric\. Select on a validation metric: val_loss, val_accuracy\. Did you mean \"val_loss\"\?"):
        Tuning(space={"lr": LogUniform(1e-3, 1.0)}, select="test_loss").check(FACTORS, "digits")
    with pytest.raises(StudyError, match=r"found 'test_accuracy', a test metric.*Did you mean \"val_accuracy\""):
        Tuning(space={"lr": LogUniform(1e-3, 1.0)}, select="test_accuracy", goal="maximize").check(FACTORS, "digits")
    # a custom workload: any test_* name is refused too, with the convention named
    with pytest.raises(StudyError, match=r"found 'test_loss', a test metric\. Select on a validation metric: a metric computed on a validation split"):
        Tuning(space={"lr": LogUniform(1e-3, 1.0)}, select="test_loss").check(FACTORS, "mypkg.mod:train")


def test_a_training_metric_of_a_builtin_workload_is_not_a_validation_metric():
    with pytest.raises(StudyError, match=r"tuning\.select: expected a validation metric the 'digits' workload reports, found 'train_loss'\. Did you mean \"val_loss\"\?"):
        Tuning(space={"lr": LogUniform(1e-3, 1.0)}, select="train_loss").check(FACTORS, "digits")


def test_every_problem_is_reported_at_once_with_suggestions():
    tuning = Tuning(
        space=PerLevel("optimiser", {"sgd": {"lr": LogUniform(0.0, 1.0)}}),
        select="val_los",
        goal="minimise",
        budget=Budget(configurations=0, compute=10),
        searcher="tpe",
        scheduler=ASHA(grace_epochs=0, reduction_factor=1),
        reruns=0,
        searches=-1,
    )
    with pytest.raises(StudyError) as info:
        tuning.check(FACTORS, "digits")
    text = str(info.value)
    expected = [
        r'tuning\.space\.factor: expected a factor of the study, found \'optimiser\' \(str\)\. Did you mean "optimizer"\?',
        r'tuning\.select: expected a validation metric the \'digits\' workload reports, found \'val_los\'\. Did you mean "val_loss"\?',
        r'tuning\.goal: expected \'minimize\' or \'maximize\', found \'minimise\' \(str\)\. Did you mean "minimize"\?',
        r"tuning\.budget: expected exactly one of configurations, compute or factor, found configurations, compute",
        r"tuning\.budget\.configurations: expected an integer >= 1, found 0",
        r"tuning\.budget\.epochs: expected epochs per configuration \(a compute budget is configurations x epochs\), found none",
        r"tuning\.searcher: expected 'random' or 'grid' or 'quasi_random', found 'tpe' \(str\)\. TPE and Bayesian searchers need optuna or hyperopt",
        r"tuning\.scheduler\.grace_epochs: expected an integer >= 1, found 0",
        r"tuning\.scheduler\.reduction_factor: expected an integer >= 2, found 1",
        r"tuning\.scheduler: expected a budget with epochs",
        r"tuning\.reruns: expected an integer >= 1, found 0",
        r"tuning\.searches: expected an integer >= 1, found -1",
    ]
    for pattern in expected:
        assert __import__("re").search(pattern, text), (pattern, text)
    assert text.startswith(f"the study is invalid: {len(info.value.problems)} problems")
    assert len(info.value.problems) == len(expected)


def test_nested_spaces_name_missing_and_unknown_levels_and_bad_ranges():
    tuning = Tuning(
        space=PerLevel("optimizer", {"sgd": {"lr": LogUniform(1.0, 0.1)}, "momentun": {"lr": LogUniform(1e-3, 1.0)}, "adam": {"model": Choice([])}}),
        select="val_loss",
    )
    problems = [str(p) for p in tuning.problems(FACTORS, "digits")]
    assert "tuning.space.spaces['momentun']: expected a level of 'optimizer', found 'momentun' (str). Did you mean \"momentum\"? Valid: adam, momentum, sgd." in problems
    assert "tuning.space.spaces: expected a space for every level of 'optimizer', found none for 'momentum'. Add 'momentum': {...} (an empty space {} tunes nothing for that level)." in problems
    assert any(p.startswith("tuning.space.spaces['sgd']['lr']: expected LogUniform(low, high) with 0 < low < high, found LogUniform(1.0, 0.1)") for p in problems)
    assert any(p.startswith("tuning.space.spaces['adam']['model']: expected a setting that is not a factor, found 'model' is a factor of the study") for p in problems)
    assert any(p.startswith("tuning.space.spaces['adam']['model']: expected Choice([value, ...]) with at least one value") for p in problems)


def test_a_budget_factor_must_hold_positive_integers_and_a_grid_must_fit_it():
    factors = {**FACTORS, "budget": [2, 8, 0.5]}
    problems = [str(p) for p in Tuning(space=SPACE, select="val_loss", budget="budget").problems(factors, "digits")]
    assert problems == ["factors['budget'].levels: expected budgets: integers >= 1, found 0.5. It is the tuning budget (tuning.budget)."]
    grid = Tuning(space=SPACE, select="val_loss", budget="budget", searcher="grid")
    problems = [str(p) for p in grid.problems({**FACTORS, "budget": [1, 8]}, "digits")]
    assert any("tuning.budget: expected at least 2 configurations (a grid covers every value of each Choice), found budget 1 for optimizer=adam" in p for p in problems)
    assert Tuning(space=SPACE, select="val_loss", budget=Budget(factor="budget", epochs=4), scheduler=ASHA()).problems({**FACTORS, "budget": [2, 8]}, "digits") == []


def test_a_valid_declaration_has_no_problems_and_exposes_its_budget():
    tuning = Tuning(space=SPACE, select="val_loss", budget=Budget(compute=24, epochs=3), searcher=Searcher.QUASI_RANDOM).check(FACTORS, "digits")
    assert tuning.the_budget.configurations_for({}) == 8
    assert tuning.tuned_settings == ["lr", "momentum", "amsgrad"]
    assert tuning.to_dict()["space"]["per_level"] == "optimizer"


# -- searches as data ----------------------------------------------------------------------------


@pytest.mark.parametrize("searcher", list(Searcher))
def test_drawing_is_a_pure_function_of_space_searcher_budget_and_seed(searcher):
    space = {"lr": LogUniform(1e-4, 1.0), "momentum": Uniform(0.5, 0.99), "nesterov": Choice([False, True])}
    first, again = draw(space, searcher, 8, seed=123), draw(space, searcher, 8, seed=123)
    assert first == again
    for config in first:
        assert 1e-4 <= config["lr"] <= 1.0 and 0.5 <= config["momentum"] <= 0.99 and config["nesterov"] in (False, True)
    if searcher.uses_seed:
        assert len(first) == 8 and draw(space, searcher, 8, seed=124) != first
    else:  # 2 points per number axis x 2 choices = 8
        assert len(first) == 8 and {c["lr"] for c in first} == {1e-4, 1.0}


def test_the_search_seed_depends_on_study_seed_cell_budget_and_index_only():
    base = search_seed(1, "cA", 16, 0)
    assert base == search_seed(1, "cA", 16, 0)
    assert len({base, search_seed(2, "cA", 16, 0), search_seed(1, "cB", 16, 0), search_seed(1, "cA", 4, 0), search_seed(1, "cA", 16, 1)}) == 5
    assert 0 <= base < 2**63


def test_the_nested_levels_of_the_space_are_respected():
    tuning = Tuning(space=SPACE, select="val_loss", budget=12, searches=2)
    planned = searches(tuning)
    assert len(planned) == 6
    for search in planned:
        optimizer = search.levels["optimizer"]
        allowed = set(SPACE.spaces[optimizer])
        assert all(set(config) == allowed for config in search.configurations)
        lows = {"sgd": 1e-3, "momentum": 1e-3, "adam": 1e-4}
        assert all(lows[optimizer] <= c["lr"] <= (1e-1 if optimizer == "adam" else 1.0) for c in search.configurations)
        trial = search.trial(3)
        assert set(SPACE.spaces[optimizer]) <= set(trial.params) and trial.levels == {"optimizer": optimizer}
        assert trial.seeds == search.training_seeds and trial.params["lr"] == search.configurations[3]["lr"]
    # the two searches of a cell draw different configurations and train with different seeds
    sgd = [s for s in planned if s.levels["optimizer"] == "sgd"]
    assert sgd[0].configurations != sgd[1].configurations and sgd[0].training_seeds != sgd[1].training_seeds
    assert [s.search_id for s in searches(tuning)] == [s.search_id for s in planned]


def test_selection_takes_the_best_of_the_longest_trained_and_breaks_ties_by_order():
    (search,) = searches(Tuning(space={"lr": LogUniform(1e-3, 1.0)}, select="val_loss", budget=4), cells=[("c", {"optimizer": "sgd"})])
    outcomes = [
        ConfigurationOutcome(0, "FINISHED", {"val_loss": 0.5}, epochs=4),
        ConfigurationOutcome(1, "STOPPED", {"val_loss": 0.1}, epochs=1),  # better, but on a shorter horizon
        ConfigurationOutcome(2, "FINISHED", {"val_loss": 0.5}, epochs=4),
        ConfigurationOutcome(3, "FINISHED", {"val_loss": 0.05, "diverged": 1.0}, epochs=4),
    ]
    selection = select(search, outcomes)
    assert selection.position == 0 and selection.configuration == search.configurations[0]
    assert math.isnan(selection.values[3]) and selection.epochs == (4, 1, 4, 4)
    failed = [ConfigurationOutcome(p, "FAILED", {}, error="boom") for p in range(4)]
    with pytest.raises(SearchFailed, match=r"no configuration finished with a finite 'val_loss' \(configurations 0: FAILED, 1: FAILED"):
        select(search, failed)


# -- on Ray Tune ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", [None, ASHA(grace_epochs=1, reduction_factor=2)], ids=["fifo", "asha"])
def test_the_same_search_seed_selects_the_same_configuration_twice(ray_session, scheduler):
    from orchestrator.tuning.ray_tune import run_searches

    tuning = Tuning(space=SPACE, select="val_loss", budget=Budget(configurations=6, epochs=4), scheduler=scheduler, searches=1)
    planned = searches(tuning)
    done: list[str] = []
    first = run_searches(planned, on_search_done=lambda run: done.append(run.search.search_id))
    second = run_searches(searches(tuning))
    assert sorted(done) == sorted(s.search_id for s in planned)  # each search handed over once, as it ended
    for search in planned:
        a, b = first[search.search_id], second[search.search_id]
        assert a.selection is not None and a.selection == b.selection
        assert [o.epochs for o in a.outcomes] == [o.epochs for o in b.outcomes]
        # the landscape's optimum is known: the selection is the configuration closest to it on the validation metric
        assert a.selection.value == min(v for v, e in zip(a.selection.values, a.selection.epochs) if e == 4)
    if scheduler is not None:  # ASHA stopped some configurations early, each search on its own
        assert any(min(o.epochs for o in run.outcomes) < 4 for run in first.values())
        assert all(o.state in ("FINISHED", "STOPPED") for run in first.values() for o in run.outcomes)
    else:
        assert all(o.state == "FINISHED" and o.epochs == 4 and "test_loss" in o.metrics for run in first.values() for o in run.outcomes)
    # another search seed draws other configurations
    other = searches(tuning, seed=8)
    assert all(o.configurations != p.configurations for o, p in zip(other, planned))


@pytest.mark.slow
def test_a_failing_configuration_is_an_outcome_not_a_crash(ray_session):
    from orchestrator.tuning.ray_tune import run_searches

    tuning = Tuning(space={"lr": LogUniform(1e-3, 1.0)}, select="val_loss", budget=Budget(configurations=3, epochs=2))
    (search,) = plan_searches(
        tuning, study="t", variant="smoke", study_seed=1, cells=[("c", {"optimizer": "sgd"})],
        params={"optimum": {"lr": 0.1}, "noise": "loud"}, workload=LANDSCAPE, streams=["data"],
    )
    run = run_searches([search])[search.search_id]
    assert run.selection is None and [o.state for o in run.outcomes] == ["FAILED"] * 3
    assert "could not convert string to float: 'loud'" in run.outcomes[0].error
    assert "no configuration finished with a finite 'val_loss'" in run.error


def test_planning_imports_no_ray():
    import subprocess

    code = "import sys, orchestrator.tuning as t; assert not [m for m in ('ray', 'torch', 'mlflow') if m in sys.modules], sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_digits_needs_a_validation_split_to_select_on():
    from orchestrator import Factor, Study, Variant

    with pytest.raises(StudyError, match=r"params\['validation_size'\]: expected a share in \(0, 1\) of the training split held out for tuning\.select \('digits' reports validation metrics only then\), found none\. e\.g\. params=\{'validation_size': 0\.2\}"):
        Study(name="x", workload="digits", factors=[Factor("optimizer", ["sgd"])], metrics={"test_loss": "minimize"},
              tuning=Tuning(space={"lr": LogUniform(1e-3, 1.0)}, select="val_loss"), variants={"smoke": Variant(), "full": Variant()})
