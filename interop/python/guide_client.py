"""The integration guide's Python service, as other teams write it.

Pydantic models with the guide's field list (required fields, types as the
guide states), a confluent-kafka consumer (earliest, manual commits, skips
what fails to parse) and producer (acks=all, idempotence on, timestamps from
datetime.utcnow().isoformat(), that is without an offset).

  guide_client.py consume --bootstrap HOST:PORT --topics a,b --want MessageReceived,ResponseReady
  guide_client.py reply --bootstrap HOST:PORT --to +15551234567 --original wamid.x --text "hello"

`consume` prints a JSON summary and exits 0 once every wanted event type
was read and validated, 1 if anything failed validation or time ran out.
"""

import argparse
import json
import sys
import time
import uuid
from datetime import datetime
from enum import Enum
from typing import Any, Dict

from confluent_kafka import Consumer, Producer
from pydantic import BaseModel, ValidationError


class EventEnvelope(BaseModel):
    event_id: str
    timestamp: datetime
    event_type: str
    version: str
    data: Dict[str, Any]
    metadata: Dict[str, str]
    attempt_count: int
    max_attempts: int


class MessageType(str, Enum):
    TEXT = "Text"
    IMAGE = "Image"
    AUDIO = "Audio"
    VIDEO = "Video"
    DOCUMENT = "Document"
    LOCATION = "Location"
    CONTACT = "Contact"
    STICKER = "Sticker"


class MessageReceived(BaseModel):
    message_id: str
    from_phone: str
    message_type: MessageType
    content: Dict[str, Any]
    received_at: datetime
    metadata: Dict[str, str]


class ResponseReady(BaseModel):
    original_message_id: str
    to_phone: str
    response_type: str
    content: Dict[str, Any]
    generated_at: datetime
    priority: str = "Normal"


MODELS = {"MessageReceived": MessageReceived, "ResponseReady": ResponseReady}


def consume(args: argparse.Namespace) -> int:
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": f"guide-python-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe(args.topics.split(","))
    wanted = set(args.want.split(","))
    valid: Dict[str, int] = {}
    invalid = []
    deadline = time.time() + args.timeout
    while time.time() < deadline and not wanted.issubset(valid):
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            invalid.append(f"kafka error: {msg.error()}")
            continue
        try:
            envelope = EventEnvelope.model_validate_json(msg.value())
            model = MODELS.get(envelope.event_type)
            if model is not None:
                model.model_validate(envelope.data)
            valid[envelope.event_type] = valid.get(envelope.event_type, 0) + 1
        except ValidationError as error:
            # The guide's services skip what fails to parse; here it is counted.
            invalid.append(f"{msg.topic()}@{msg.offset()}: {error}")
        consumer.commit(message=msg, asynchronous=False)
    consumer.close()
    ok = wanted.issubset(valid) and not invalid
    print(json.dumps({"client": "python", "valid": valid, "invalid": invalid, "ok": ok}))
    return 0 if ok else 1


def reply(args: argparse.Namespace) -> int:
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "enable.idempotence": True})
    now = datetime.utcnow().isoformat()
    envelope = {
        "event_id": str(uuid.uuid4()),
        "timestamp": now,
        "event_type": "ResponseReady",
        "version": "1.0",
        "data": {
            "original_message_id": args.original,
            "to_phone": args.to,
            "response_type": "Text",
            "content": {"Text": {"message": args.text}},
            "generated_at": now,
            "priority": "Normal",
        },
        "metadata": {"processed_by": "python-guide-service", "processing_timestamp": now},
        "attempt_count": 1,
        "max_attempts": 3,
    }
    errors = []
    producer.produce(
        "conversation.responses",
        key=args.to,
        value=json.dumps(envelope).encode(),
        on_delivery=lambda err, _msg: errors.append(err) if err else None,
    )
    remaining = producer.flush(30)
    ok = remaining == 0 and not errors
    print(json.dumps({"client": "python", "produced": ok, "errors": [str(e) for e in errors]}))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("consume")
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--topics", required=True)
    c.add_argument("--want", required=True)
    c.add_argument("--timeout", type=float, default=60)
    r = commands.add_parser("reply")
    r.add_argument("--bootstrap", required=True)
    r.add_argument("--to", required=True)
    r.add_argument("--original", required=True)
    r.add_argument("--text", required=True)
    args = parser.parse_args()
    return consume(args) if args.command == "consume" else reply(args)


if __name__ == "__main__":
    sys.exit(main())
