"""What users do with recorded executions, below the command line.

* :mod:`.inputs` - a study's analysis inputs (trials from the records, what to fit);
* :mod:`.compare` - drift between two executions;
* :mod:`.schedule` - RayCronJob / RayJob manifests and crontab lines;
* :mod:`.writeup` and :mod:`.findings` - run, analyse and write a study's page.

Modules import lazily (nothing here is imported by ``import orchestrator``).
"""

from __future__ import annotations
