"""A causal LM's chat template, as the deliverable carries it: which tokens end a turn (genai and `infer` stop
there) and the prompt a conversation becomes.

The template is the tokenizer's own Jinja text (`chat_template` in tokenizer_config.json, or
chat_template.jinja beside it, as transformers 5 saves it), rendered in Jinja's sandbox as transformers renders
it, so the ids match what the model was tuned on. jinja2 comes with torch (and the llm extra names it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TURN_END = ("end", "eot")  # <|im_end|>, <|eot_id|>, <|end|>, <end_of_turn>: special tokens that close a turn


def template(folder: Path) -> str | None:
    """The chat template of the tokenizer files in `folder`, if it has one."""
    config = folder / "tokenizer_config.json"
    found = json.loads(config.read_text()).get("chat_template") if config.is_file() else None
    if isinstance(found, list):  # several named templates: the default one
        found = next((t["template"] for t in found if t.get("name") == "default"), None)
    if not found and (folder / "chat_template.jinja").is_file():
        found = (folder / "chat_template.jinja").read_text()
    return str(found) if found else None


def _specials(folder: Path) -> dict[str, int]:
    """Special token text → id, from tokenizer.json's added tokens."""
    tokens = json.loads((folder / "tokenizer.json").read_text()).get("added_tokens", [])
    return {t["content"]: t["id"] for t in tokens if t.get("special")}


def end_ids(folder: Path, eos: int | list[int] | None) -> list[int]:
    """The ids generation stops at: the model's eos and every special token the chat template writes that ends a
    turn (SmolLM2's <|im_end|>, Llama 3's <|eot_id|>)."""
    found = [eos] if isinstance(eos, int) else list(eos or [])
    text = template(folder) or ""
    if text and (folder / "tokenizer.json").is_file():
        found += [i for t, i in _specials(folder).items() if t in text and any(w in t.lower() for w in TURN_END)]
    return sorted(set(found))


def render(folder: Path, messages: list[dict[str, str]]) -> str:
    """The prompt text for `messages` ([{role, content}]), ending where the assistant's answer begins."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    text = template(folder)
    if text is None:
        raise ValueError(f"{folder} has no chat template")
    config = folder / "tokenizer_config.json"
    names: dict[str, Any] = json.loads(config.read_text()) if config.is_file() else {}

    def raise_exception(message: str) -> None:
        raise ValueError(f"the chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(text).render(messages=messages, add_generation_prompt=True,
                                        bos_token=_token(names.get("bos_token")),
                                        eos_token=_token(names.get("eos_token")))


def _token(value: Any) -> str:
    return str(value.get("content", "") if isinstance(value, dict) else value or "")
