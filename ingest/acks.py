"""Interpreting a subscribe acknowledgement for one request (pure).

Bybit doesn't document what happens to the other topics of a request with one bad
topic (docs/bybit.md#subscribe-unsubscribe-and-acks), so both readings are handled: the named bad topic fails,
and every other topic of the request is subscribed again on its own. If Bybit had
subscribed them after all, that retry answers "already subscribed", which counts as
success.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ingest.parse import Control, is_already_subscribed, topic_named_in


@dataclass
class AckResult:
    ok: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    retry: list[str] = field(default_factory=list)   # subscribe each again, alone


def interpret(batch: list[str], ack: Control) -> AckResult:
    res = AckResult()
    if ack.per_topic:  # option / spread COMMAND_RESP
        listed = set(ack.success_topics) | set(ack.fail_topics)
        for t in batch:
            if t in ack.success_topics:
                res.ok.append(t)
            elif t in ack.fail_topics:
                res.failed[t] = ack.ret_msg or f"rejected by Bybit (failTopics): {t}"
            elif t not in listed:
                res.retry.append(t)
        return res
    if ack.success:
        res.ok.extend(batch)
        return res
    msg = ack.ret_msg or "subscribe refused (no message)"
    if len(batch) == 1:
        if is_already_subscribed(msg):
            res.ok.append(batch[0])
        else:
            res.failed[batch[0]] = msg
        return res
    named = topic_named_in(msg)
    if named in batch:
        if is_already_subscribed(msg):
            res.retry.extend(batch)
        else:
            res.failed[named] = msg
            res.retry.extend(t for t in batch if t != named)
        return res
    res.retry.extend(batch)   # e.g. "args size >10": nothing names a topic
    return res
