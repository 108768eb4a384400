"""Credentials never live in configs: find config keys that look like secrets.

Hub and tracker tokens (HF_TOKEN, WANDB_API_KEY, ...) come only from the environment. A
config key such as ``hf_token``, ``wandb_api_key`` or ``db_password`` is refused with one
line that says so, rather than being stored, echoed by ``check-config`` or logged.

Matching is by whole words of the key (split at ``_``, ``-``, ``.`` and camelCase), so
``max_new_tokens`` and ``tokenizer`` are not secrets while ``hf_token`` and ``apiKey`` are.
Pure: mappings in, lists of dotted paths out.
"""

from __future__ import annotations

import re
from typing import Any, List, Mapping

SECRET_WORDS = {"token", "password", "passwd", "secret", "apikey", "credential", "credentials"}
SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("auth", "key")}


def key_words(key: str) -> List[str]:
    """``'wandbApiKey'`` -> ``['wandb', 'api', 'key']``; ``'HF_TOKEN'`` -> ``['hf', 'token']``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(key))
    return [w for w in re.split(r"[\s_\-.]+", spaced.lower()) if w]


def looks_like_secret(key: str) -> bool:
    words = key_words(key)
    return bool(SECRET_WORDS.intersection(words)) or any(p in SECRET_PAIRS for p in zip(words, words[1:]))


def find_secret_keys(mapping: Any, prefix: str = "") -> List[str]:
    """Dotted paths (``a.b[0].c``) of every key, at any depth, that looks like a secret."""
    found: List[str] = []
    if isinstance(mapping, Mapping):
        for key, value in mapping.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if looks_like_secret(str(key)):
                found.append(path)
            found.extend(find_secret_keys(value, path))
    elif isinstance(mapping, (list, tuple)):
        for i, value in enumerate(mapping):
            found.extend(find_secret_keys(value, f"{prefix}[{i}]"))
    return found


def secret_keys_message(paths: List[str], where: str) -> str:
    """The one-line error for ``paths`` found in ``where`` (a file name or an override)."""
    return (f"{where}: key '{paths[0]}'" + (f" (and {len(paths) - 1} more)" if len(paths) > 1 else "")
            + " looks like a credential; configs must not hold secrets: set it in the environment instead "
            "(e.g. HF_TOKEN, WANDB_API_KEY)")
