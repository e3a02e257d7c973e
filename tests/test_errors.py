"""The error table: one row per error type, and what each adapter makes of it."""

from __future__ import annotations

import pickle

import pytest

from mailflow import errors
from mailflow.errors import (
    TABLE,
    Conflict,
    EgressUnavailable,
    InputTimeout,
    InvalidInput,
    LoopDetected,
    MailflowError,
    MalformedMessage,
    MessageTooLarge,
    NoRecipients,
    NotFound,
    PermanentFailure,
    SenderBlocked,
    SmtpReplyError,
    StorageUnavailable,
    TemporaryFailure,
    UnknownDomain,
    UnknownRecipient,
)

# What the adapters answered before the table existed: these are contracts.
REPLIES = [
    (UnknownDomain, "550 5.7.1", 422, errors.EX_NOUSER, "DUNNO"),
    (UnknownRecipient, "550 5.1.1", 422, errors.EX_NOUSER, "REJECT"),
    (MessageTooLarge, "552 5.3.4", 413, errors.EX_DATAERR, "REJECT"),
    (MalformedMessage, "554 5.6.0", 400, errors.EX_DATAERR, "REJECT"),
    (NoRecipients, "554 5.5.1", 400, errors.EX_DATAERR, "REJECT"),
    (LoopDetected, "554 5.4.6", 422, errors.EX_DATAERR, "REJECT"),
    (SenderBlocked, "550 5.7.1", 422, errors.EX_NOUSER, "REJECT"),
    (PermanentFailure, "554 5.0.0", 422, errors.EX_DATAERR, "REJECT"),
    (StorageUnavailable, "451 4.3.0", 503, errors.EX_TEMPFAIL, "DEFER_IF_PERMIT"),
    (EgressUnavailable, "451 4.4.1", 503, errors.EX_TEMPFAIL, "DEFER_IF_PERMIT"),
    (TemporaryFailure, "451 4.3.0", 503, errors.EX_TEMPFAIL, "DEFER_IF_PERMIT"),
    (InputTimeout, "421 4.4.2", 408, errors.EX_TEMPFAIL, "DEFER_IF_PERMIT"),
]


@pytest.mark.parametrize(("cls", "smtp", "http", "sysexit", "policy"), REPLIES)
def test_each_refusal_keeps_its_codes(cls: type[SmtpReplyError], smtp: str, http: int,
                                      sysexit: int, policy: str) -> None:
    error = cls("why")
    row = errors.spec(error)
    assert errors.smtp_reply(error) == error.smtp_reply() == f"{smtp} why"
    assert (row.http_status, row.sysexit, row.policy) == (http, sysexit, policy)
    assert f"{cls.code} {cls.enhanced}" == smtp  # the class attributes come from the table
    assert errors.status_line(error) == f"{smtp.split()[1]} why"


def test_cli_exit_statuses_are_those_of_docs_cli_md() -> None:
    assert errors.spec(NotFound("list", "x@y.test")).cli_exit == 3
    assert errors.spec(Conflict("domain", "y.test")).cli_exit == 4
    assert errors.spec(InvalidInput("bad")).cli_exit == 2
    assert errors.spec(MailflowError("no store")).cli_exit == 1
    assert errors.spec(errors.ConfigurationError("bad setting")).cli_exit == 1


def test_every_type_has_a_row_and_keys_are_unique_per_meaning() -> None:
    def subclasses(cls: type[MailflowError]) -> set[type[MailflowError]]:
        found = set(cls.__subclasses__())
        return found.union(*(subclasses(c) for c in found))

    assert subclasses(MailflowError) <= set(TABLE)
    keys = [row.key for cls, row in TABLE.items() if cls is not SmtpReplyError]
    assert len(keys) == len(set(keys))
    for cls, row in TABLE.items():
        assert row.enhanced[0] == str(row.smtp_code)[0]  # 4.x.x with 4yz, 5.x.x with 5yz
        if issubclass(cls, TemporaryFailure):
            assert row.smtp_code // 100 == 4 and row.sysexit == errors.EX_TEMPFAIL
        if issubclass(cls, PermanentFailure):
            assert row.smtp_code // 100 == 5 and row.policy in ("REJECT", "DUNNO")


def test_an_unlisted_subclass_takes_its_parents_row() -> None:
    class Greylisted(TemporaryFailure):
        pass

    assert errors.spec(Greylisted()) is TABLE[TemporaryFailure]
    assert errors.spec(ValueError("a bug")) is TABLE[MailflowError]


def test_errors_cross_processes_as_key_and_reason() -> None:
    for cls in (UnknownRecipient, LoopDetected, SenderBlocked, StorageUnavailable,
                EgressUnavailable, TemporaryFailure):
        error = cls("the reason")
        rebuilt = errors.error_from_key(errors.error_key(error), error.reason)
        assert type(rebuilt) is cls and rebuilt.reason == "the reason"
        assert errors.error_class(errors.error_key(error)) is cls
    unknown = errors.error_from_key("from_a_newer_release", "why")
    assert isinstance(unknown, TemporaryFailure) and unknown.reason == "why"
    not_a_refusal = errors.error_from_key("not_found", "why")
    assert isinstance(not_a_refusal, TemporaryFailure)
    with pytest.raises(KeyError):
        errors.error_class("nope")


def test_recipient_reply_for_the_scheduler() -> None:
    code, text = errors.recipient_reply(EgressUnavailable("cannot connect to 10.0.0.5:25"))
    assert (code, text) == (451, "4.4.1 cannot connect to 10.0.0.5:25")


def test_policy_answers() -> None:
    assert errors.policy_answer(UnknownDomain()) == "DUNNO"
    assert errors.policy_answer(UnknownRecipient("no list or alias <a@b> here")) == (
        "REJECT 5.1.1 no list or alias <a@b> here")
    assert errors.policy_answer(StorageUnavailable("later")) == "DEFER_IF_PERMIT 4.3.0 later"


def test_directory_errors_carry_fields_not_commands() -> None:
    missing = NotFound("domain", "example.net")
    assert (missing.kind, missing.name, str(missing)) == ("domain", "example.net",
                                                          "no domain example.net")
    assert str(NotFound("list", "a@b.test")) == "no list or alias a@b.test"
    busy = Conflict("domain", "b.test", "domain b.test still has 2 list(s)", dependents=2)
    assert busy.dependents == 2
    for error in (missing, busy, Conflict("list", "a@b.test")):
        assert "mailflow" not in str(error) and "`" not in str(error)
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), copy.kind, copy.name, str(copy)) == (
            type(error), error.kind, error.name, str(error))
    assert pickle.loads(pickle.dumps(busy)).dependents == 2


def test_enhanced_status_of_a_relay_problem_finds_its_refusal() -> None:
    found = errors.spec_for_enhanced("5.1.1")
    assert found is not None and found.sysexit == errors.EX_NOUSER
    assert errors.spec_for_enhanced("4.3.0") is None
    assert errors.spec_for_enhanced("") is None
