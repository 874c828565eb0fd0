"""What `fusionstream produce` says when the broker does not take a record (the failure's last line to users)."""

from __future__ import annotations

from aiokafka.errors import MessageSizeTooLargeError, RequestTimedOutError, UnknownTopicOrPartitionError

from fusionstream.consumers.producers.publish import _failure
from fusionstream.stream.records import Encoding, Modality, Record


def _record() -> Record:
    return Record("cam-00", Modality.VIDEO, 113, 0, 66_000_000, Encoding.JPEG, b"\xff\xd8", {"width": 4, "height": 4})


def test_a_topic_deleted_while_producing_is_named_as_such() -> None:
    # Measured: a topic deleted mid-run left the sender retrying for produce_hold_s, then
    # "... was not delivered: UnknownTopicOrPartitionError()".
    error = _failure(UnknownTopicOrPartitionError(), _record(), "fx3.video", 1527)
    assert str(error) == ("video record cam-00#113 (1527 bytes) to fx3.video was not delivered: topic fx3.video does "
                          "not exist (deleted while producing, or the broker lost its data?); run produce again to "
                          "create it")
    assert "too large for Kafka" in str(_failure(MessageSizeTooLargeError(), _record(), "fx3.video", 1527))
    timed_out = _failure(RequestTimedOutError(), _record(), "fx3.video", 1527)
    assert "was not delivered: RequestTimedOutError()" in str(timed_out) and timed_out.retriable
