"""What an ACL refusal says (an outside operator's secured cluster): aiokafka's own words named neither the kind of
resource nor the fix (``[Error 30] GroupAuthorizationFailedError: fusionstream``)."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from fusionstream.consumers.cli_errors import describe


@pytest.mark.parametrize(("error", "said"), [
    (GroupAuthorizationFailedError("fusionstream"), "consumer group 'fusionstream' (an ACL): grant its principal READ"),
    (TopicAuthorizationFailedError("fs.predictions"), "topic fs.predictions (an ACL)"),
    (TransactionalIdAuthorizationFailed("fusionstream.vm-1"), "transactional id 'fusionstream.vm-1'"),
    (ClusterAuthorizationFailedError(), "IDEMPOTENT_WRITE on the cluster"),
])
def test_a_denial_names_the_resource_and_the_grant(error: Exception, said: str) -> None:
    assert said in describe(error) and "[Error" not in describe(error)


def test_other_errors_keep_their_own_words() -> None:
    closed = "Connection at 127.0.0.1:1 closed"
    assert describe(KafkaConnectionError(closed)).endswith(closed)
