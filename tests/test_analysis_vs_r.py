"""Differential test against R: lme4 + lmerTest on many generated designs.

Each design is analysed here and by ``lmerTest::lmer`` with the same random terms (the ones
``analyze`` reports in ``model["random_terms"]``); the Type III F, its Satterthwaite
denominator df, the p-value and the REML variance components must agree. Runs where
``Rscript`` with lme4 and lmerTest is installed (CI installs them); skipped otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis import analyze


def _r_ready() -> str | None:
    if shutil.which("Rscript") is None:
        return "Rscript is not installed (apt-get install r-base r-cran-lme4 r-cran-lmertest)"
    probe = subprocess.run(["Rscript", "-e", "suppressMessages(library(lmerTest)); cat('ok')"], capture_output=True,
                           text=True, timeout=120)
    if probe.stdout.strip() != "ok":
        return "R has no lmerTest (install.packages('lmerTest') or apt-get install r-cran-lmertest)"
    return None


REASON = _r_ready()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.slow]

R_SCRIPT = r"""
suppressMessages(library(lmerTest))
library(jsonlite)
specs <- fromJSON(commandArgs(trailingOnly = TRUE)[1], simplifyVector = FALSE)
out <- list()
for (s in specs) {
  d <- read.csv(s$csv, colClasses = "character")
  d$y <- as.numeric(d$y)
  for (f in setdiff(names(d), "y")) d[[f]] <- factor(d[[f]])
  fit <- lmer(as.formula(s$formula), data = d, REML = TRUE,
              control = lmerControl(optCtrl = list(ftol_abs = 1e-12, xtol_abs = 1e-10)))
  a <- anova(fit, type = 3)
  vc <- as.data.frame(VarCorr(fit))
  out[[s$name]] <- list(terms = rownames(a), F = a[["F value"]], den = a[["DenDF"]], p = a[["Pr(>F)"]],
                        grp = vc$grp, vcov = vc$vcov)
}
cat(toJSON(out, digits = NA))
"""


def designs() -> list[tuple[str, pd.DataFrame, list[str], list[str], int]]:
    """(name, data, fixed, random, interactions): balanced, unbalanced, crossed, nested, repeated measures."""
    out = []
    for k in range(3):
        rng = np.random.default_rng(100 + k)
        # A x seed with replicates and a seed:A interaction; then 15% of trials lost.
        u, w = rng.normal(0, 1, 7), rng.normal(0, 0.7, (7, 3))
        df = pd.DataFrame([(a, s, 0.4 * a + u[s] + w[s, a] + rng.normal(0, 0.5)) for a in range(3) for s in range(7)
                           for _ in range(2)], columns=["A", "seed", "y"])
        out.append((f"seedxA_{k}", df, ["A"], ["seed"], 2))
        out.append((f"seedxA_lost_{k}", df.sample(frac=0.85, random_state=k), ["A"], ["seed"], 2))
        # Two fixed factors, one trial per seed x cell: seed, seed:A, seed:B (repeated measures), 10% lost.
        u, wa, wb = rng.normal(0, 1, 6), rng.normal(0, 0.6, (6, 2)), rng.normal(0, 0.5, (6, 3))
        df = pd.DataFrame([(a, b, s, 0.3 * b + u[s] + wa[s, a] + wb[s, b] + rng.normal(0, 0.4)) for a in range(2)
                           for b in range(3) for s in range(6)], columns=["A", "B", "seed", "y"])
        out.append((f"repeated_{k}", df.sample(frac=0.9, random_state=k), ["A", "B"], ["seed"], 2))
        # Two crossed seed streams and a fixed factor, unbalanced.
        ui, ud, wi = rng.normal(0, 1, 5), rng.normal(0, 0.7, 4), rng.normal(0, 0.8, (5, 3))
        df = pd.DataFrame([(a, i, j, ui[i] + ud[j] + wi[i, a] + rng.normal(0, 0.4)) for a in range(3) for i in range(5)
                           for j in range(4)], columns=["A", "seed_init", "seed_data", "y"])
        out.append((f"two_streams_{k}", df.sample(frac=0.9, random_state=k), ["A"], ["seed_init", "seed_data"], 2))
        # Seeds nested in the levels of A (a new seed per level), unbalanced replicates.
        u = rng.normal(0, 1, 12)
        df = pd.DataFrame([(s // 4, s, 0.5 * (s // 4) + u[s] + rng.normal(0, 0.5)) for s in range(12)
                           for _ in range(2 + s % 3)], columns=["A", "seed", "y"])
        out.append((f"nested_{k}", df, ["A"], ["seed"], 2))
    return out


def test_type3_satterthwaite_and_reml_agree_with_lmertest(tmp_path):
    specs, ours = [], {}
    for name, df, fixed, random, inter in designs():
        df = df.reset_index(drop=True)
        res = analyze(df, "y", fixed=fixed, random=random, interactions=inter, bootstrap=0)
        ours[name] = res
        path = tmp_path / f"{name}.csv"
        df.astype({c: str for c in df.columns if c != "y"}).to_csv(path, index=False)
        rhs = "*".join(fixed) + "".join(f" + (1|{r['term']})" for r in res.model["random_terms"])
        specs.append({"name": name, "csv": str(path), "formula": f"y ~ {rhs}"})
    (tmp_path / "specs.json").write_text(json.dumps(specs))
    (tmp_path / "fit.R").write_text(R_SCRIPT)
    proc = subprocess.run(["Rscript", str(tmp_path / "fit.R"), str(tmp_path / "specs.json")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    r_out = json.loads(proc.stdout)
    checked = 0
    for name, res in ours.items():
        r = r_out[name]
        vc = {v["component"]: v["variance"] for v in res.variance_components}
        r_vc = dict(zip(r["grp"], r["vcov"]))
        resid = vc["Residual"]
        for comp, value in vc.items():
            assert value == pytest.approx(r_vc[comp], rel=2e-3, abs=2e-4 * resid), (name, comp)
        boundary = any(v["boundary"] for v in res.variance_components)
        rows = {row["term"]: row for row in res.anova}
        for term, F, den, p in zip(r["terms"], r["F"], r["den"], r["p"]):
            if boundary and "expected mean squares" in res.model["tests"]:
                continue  # EMS (aov) and REML tests differ by design when a component is at 0
            assert rows[term]["F"] == pytest.approx(F, rel=2e-3), (name, term)
            # one-df tests agree to lme4's optimiser tolerance; for several df, lmerTest combines the
            # per-direction df through E = sum nu/(nu - 2), which magnifies that tolerance several-fold
            assert rows[term]["den_df"] == pytest.approx(den, rel=2e-3 if rows[term]["df"] == 1 else 1e-2), (name, term)
            assert rows[term]["p"] == pytest.approx(p, rel=1e-2, abs=1e-6), (name, term)
            checked += 1
    assert checked >= 20
