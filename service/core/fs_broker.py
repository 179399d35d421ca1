"""The embedded stack's broker: kombu's filesystem transport, with messages that appear whole.

Why: kombu's filesystem ``_put`` creates the message file and then writes it, and ``_get`` moves and
reads whatever ``*.msg`` file it lists first, without the writer's lock. A worker that polls between the
two reads an empty file, and the JSON error is fatal to its consumer: CI saw a worker exit with
``Unrecoverable error: JSONDecodeError`` one second after start, when beat's first ``reconcile`` tick
landed (the supervisor restarted it, so nothing was lost, but a job could have waited for the restart).
Writing under a name the reader ignores and renaming it into place (atomic within one directory) means
a listed message is always complete.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

TRANSPORT = "service.core.fs_broker:Transport"


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # filesystem.Channel's
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")  # not "<anything>.<queue>.msg"
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
