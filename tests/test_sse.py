"""The event-stream parser: what listen --url and the tests read streams with."""

from __future__ import annotations

from distreload.sse import EventStreamParser, ServerSentEvent


def events_of(text: str) -> list[ServerSentEvent]:
    parser = EventStreamParser()
    return [event for line in text.split("\n") if (event := parser.feed(line)) is not None]


def test_an_event_ends_at_a_blank_line_with_its_lines_joined() -> None:
    stream = (
        'retry: 1000\n\nevent: hello\nid: e-1\ndata: {"a":\ndata:  1}\n\n'
        ": heartbeat\n\nevent: reload\ndata: x\n\n"
    )
    assert events_of(stream) == [
        ServerSentEvent("hello", '{"a":\n 1}', "e-1"),
        ServerSentEvent("reload", "x", "e-1"),  # the last id stays for the events after it
    ]


def test_no_data_means_no_event_and_unknown_fields_are_ignored() -> None:
    assert events_of("event: reload\n\nfoo: bar\n:comment\n\n") == []
    assert events_of("data\n\n") == [ServerSentEvent("message", "", None)]


def test_an_id_with_a_nul_is_ignored() -> None:
    assert events_of("id: a\0b\ndata: x\n\n") == [ServerSentEvent("message", "x", None)]
