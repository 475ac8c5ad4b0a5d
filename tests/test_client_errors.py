"""The client raises one exception class per wire error code, chosen by the code (never
by matching text), and the base class of its kind for a code it does not know."""

from __future__ import annotations

import pytest

from protocol import ErrorCode, PathError, PathReason, TransferErrorCode
from rtc_worker import errors
from rtc_worker.errors import (
    InputCorrupted,
    InputNotFound,
    MalformedReply,
    PathRefusedError,
    TransferFailedError,
    WorkerBusy,
    WorkerProtocolError,
    path_refused,
    transfer_ended,
    transfer_failed,
    worker_protocol_error,
)


@pytest.mark.parametrize("reason", list(PathReason))
def test_every_path_reason_has_its_own_class(reason: PathReason) -> None:
    exc = path_refused(PathError.of(reason, "inputs/a b::c.zip"))
    assert type(exc) is not PathRefusedError and type(exc).KIND is reason
    assert (exc.kind, exc.path, exc.reason) == (
        reason,
        "inputs/a b::c.zip",
        f"{reason.value}: inputs/a b::c.zip",
    )


def test_a_path_error_in_other_words_is_the_base_class() -> None:
    exc = path_refused(PathError("the disk is on fire"))
    assert type(exc) is PathRefusedError and exc.kind is None and exc.path is None


def test_the_reasons_that_allow_a_retry_over_the_channel_are_classes() -> None:
    assert isinstance(path_refused(PathError.of(PathReason.NOT_FOUND, "x")), InputNotFound)
    assert isinstance(path_refused(PathError.of(PathReason.CORRUPTED, "x")), InputCorrupted)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_protocol_error_code_has_a_class(code: ErrorCode) -> None:
    exc = worker_protocol_error(code, "detail")
    assert isinstance(exc, WorkerProtocolError) and type(exc) is not WorkerProtocolError
    assert (exc.code, exc.detail) == (code, "detail")
    assert code == type(exc).CODE or type(exc) is MalformedReply


def test_worker_busy_and_an_unknown_code() -> None:
    assert type(worker_protocol_error("WORKER_BUSY", "later")) is WorkerBusy
    future = worker_protocol_error("SOME_FUTURE_CODE", "?")
    assert type(future) is WorkerProtocolError and future.code == "SOME_FUTURE_CODE"


@pytest.mark.parametrize("code", list(TransferErrorCode))
def test_every_transfer_error_code_has_its_own_class(code: TransferErrorCode) -> None:
    exc = transfer_failed(code, "detail")
    assert type(exc) is not TransferFailedError and code == type(exc).CODE
    assert (exc.code, exc.detail) == (code, "detail")
    assert type(transfer_failed("NEWER", "?")) is TransferFailedError


def test_a_transfer_refused_with_a_protocol_error_raises_its_protocol_class() -> None:
    assert type(transfer_ended("AUTH_REQUIRED", "no anonymous clients")) is errors.AuthRequired
    assert type(transfer_ended("HASH_MISMATCH", "?")) is errors.HashMismatch
    assert type(transfer_ended("UNEXPECTED_DATA", "?")) is errors.UnexpectedData
    assert type(transfer_ended("NEWER", "?")) is TransferFailedError


def test_a_cancelled_job_is_its_own_class() -> None:
    assert issubclass(errors.JobCancelled, errors.JobFailedError)
    assert errors.CANCELLED_REASON == "cancelled"
