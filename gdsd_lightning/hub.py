"""Access to the Hugging Face hub (and W&B) that fails in seconds, with a sentence, when unreachable.

Without this, an offline machine spends about 25 s in retries per file and ends in a traceback
wall. `offline_unless_reachable()` checks one TCP connection to the hub endpoint; when it fails,
offline mode is switched on (environment and the libraries' already-read constants) so
transformers and datasets answer from the local cache at once.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from gdsd_lightning.errors import UserError


@functools.lru_cache(maxsize=None)
def reachable(url: str, timeout_s: float = 3.0) -> bool:
    """Whether one TCP connection to the host of `url` succeeds within `timeout_s`."""
    endpoint = urlparse(url)
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def hub_reachable() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") != "1" and reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def wandb_reachable() -> bool:
    """Whether Weights & Biases can log online (else WandbLogger runs offline)."""
    return os.environ.get("WANDB_MODE") != "offline" and reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))


def offline_unless_reachable() -> bool:
    """True when the hub is reachable; otherwise switch the HF libraries to their local cache."""
    if hub_reachable():
        return True
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets.config
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    return False


def unreachable(what: str, hub_id: str, local_hint: str) -> UserError:
    return UserError(f"cannot load {what} {hub_id!r}: the Hugging Face hub is unreachable from this machine "
                     f"and it is not in the local cache; download it where the hub is reachable and {local_hint}")
