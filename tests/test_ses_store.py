"""What became of each SES message, on SQLite and PostgreSQL."""

from __future__ import annotations

from mailflow.store import Repository


def test_ses_outcomes_are_kept_once_and_purged(repo: Repository) -> None:
    assert repo.ses_outcome("ses-1") is None
    repo.note_ses_outcome("ses-1", "delivered", "m1", 100.0)
    repo.note_ses_outcome("ses-1", "rejected", "", 150.0)  # a second note changes nothing
    repo.note_ses_outcome("ses-2", "blocked", "", 200.0)
    assert repo.ses_outcome("ses-1") == ("delivered", "m1")
    assert repo.purge_ses_outcomes(before=200.0) == 1
    assert repo.ses_outcome("ses-1") is None
    assert repo.ses_outcome("ses-2") == ("blocked", "")
