"""Read TensorBoard event files back without the writer: TFRecord framing and the Event proto."""

import struct


def events(log_dir):
    """Every event in ``log_dir``'s event files, oldest file first."""
    from tensorboardX.proto import event_pb2

    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            # Each record: length (uint64), its crc (uint32), the data, its crc (uint32).
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            yield event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4


def scalars(log_dir) -> dict:
    """Every scalar in the event files, by tag: ``{tag: [(step, value), ...]}``."""
    found: dict = {}
    for event in events(log_dir):
        for value in event.summary.value:
            found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found
