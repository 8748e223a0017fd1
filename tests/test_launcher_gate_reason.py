"""A gate refusal reaches the version's ``mlflow_unlearn.error`` with the gate's reason, ``ids:`` requests included
(issue 17 item 5): the launcher reads the job run's gate-reason tag, which holds numbers and fixed words only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow_unlearn_plugins import job

from mlflow_unlearn.request import UnlearnRequest
from mlflow_unlearn.tracking import vocabulary as vocab

REASON = ("membership: the unlearned model still tells the forget set from same-class non-members by their loss: "
          "AUC 91.0% (95% CI 88.0-94.0%) lies above chance (50%)")


class _Client:
    def __init__(self, status: str, tags: dict[str, str]) -> None:
        self.run = SimpleNamespace(info=SimpleNamespace(status=status), data=SimpleNamespace(tags=tags))

    def get_run(self, run_id: str):
        return self.run


def _launch(tmp_path, client):
    launch = object.__new__(job.Job)
    launch.client, launch.log_path, launch.request_id = client, str(tmp_path / "job.log"), "r1"
    launch.settings = SimpleNamespace(log_dir=str(tmp_path))
    launch._stopped = lambda deadline=True: None  # neither cancelled nor timed out (tests/test_plugin_cancel.py)
    return launch


@pytest.mark.parametrize("status", ["FAILED", "FINISHED"])  # the CLI exits non-zero on a refusal; the API does not
@pytest.mark.parametrize("forget", ["ids:/srv/requests/forget.txt", "classes:3"])
def test_gate_reason_is_the_error_whatever_the_forget_spec(tmp_path, status, forget):
    launch = _launch(tmp_path, _Client(status, {vocab.VERDICT_TAG: "failed", vocab.GATE_REASON_TAG: REASON}))
    failed = []
    launch._fail = lambda run_id, reason, expect=(): failed.append(reason)
    request = UnlearnRequest(forget)
    launch._finalize(request, "run123", exited_ok=status == "FINISHED")
    assert failed == [f"the acceptance gate refused the unlearned model: {REASON} (run run123)"]
    assert "forget.txt" not in failed[0]


def test_other_job_failures_of_ids_requests_stay_generic(tmp_path):
    launch = _launch(tmp_path, _Client("FAILED", {}))
    (tmp_path / "job.log").write_text("ValueError: unknown id user-0001\n")
    failed = []
    launch._fail = lambda run_id, reason, expect=(): failed.append(reason)
    launch._finalize(UnlearnRequest("ids:/x.txt"), "run9", exited_ok=False)
    assert failed and "user-0001" not in failed[0] and failed[0].startswith("the unlearn job failed")

