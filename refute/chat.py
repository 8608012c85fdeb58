"""Chat templates: a checkpoint's conversation format, rendered as `transformers` renders it.

A Hugging Face checkpoint names its chat template in `chat_template.jinja` (transformers >= 4.43
writes it there) or in tokenizer_config.json (`chat_template`: a string, or a list of named
templates of which "default" is used). `transformers.PreTrainedTokenizerBase.apply_chat_template`
renders it in a jinja2 `ImmutableSandboxedEnvironment` (trim_blocks, lstrip_blocks, the
loopcontrols extension, its own `tojson`, `raise_exception`, `strftime_now`, `dict` and a
`namespace` that refuses underscore names), with the special tokens of tokenizer_config.json
(`bos_token`, `eos_token`, ...) as variables, keys whose value is None dropped from each
message, and then encodes the text without adding special tokens. `ChatTemplate` does the same
without importing transformers (tests/test_serve.py compares the two), so that the prompt a
chat request is claimed with is the one the checkpoint's authors meant.

    template = ChatTemplate.of(model)            # None: the checkpoint has none
    tokens = template.encode(model.tokenizer, [{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from refute.errors import RefuteError

SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
"""The special-token attributes transformers passes to a template (its special_tokens_map)."""


class ChatTemplateError(RefuteError, ValueError):
    """A chat template cannot be read or rendered (a malformed template, `raise_exception`)."""


class _Dict:
    """`dict(...)` and `dict.fromkeys(...)` in a template, and no other attribute of the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class ChatTemplate:
    """One checkpoint's chat template and the special tokens it may refer to."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None) -> None:
        self.source = source
        self.special_tokens = dict(special_tokens or {})

    @classmethod
    def of(cls, model: Any) -> ChatTemplate | None:
        """The template of a model loaded from a checkpoint directory (None: it has none, or
        the model is a built-in one)."""
        directory = Path(str(getattr(model, "name", model)))
        if not directory.is_dir():
            return None
        return cls.from_directory(directory)

    @classmethod
    def from_directory(cls, directory: Path) -> ChatTemplate | None:
        config: dict[str, Any] = {}
        path = directory / "tokenizer_config.json"
        if path.exists():
            try:
                config = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ChatTemplateError(f"{path} is not JSON: {exc}") from None
        source: Any = None
        jinja = directory / "chat_template.jinja"
        if jinja.exists():
            source = jinja.read_text()
        else:
            source = config.get("chat_template")
            if isinstance(source, list):  # named templates: the default one
                named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
                source = named.get("default")
        if source is None:
            return None
        if not isinstance(source, str):
            raise ChatTemplateError(f"{path}: chat_template is not a string")
        special = {}
        for name in SPECIAL_TOKENS:
            value = config.get(name)
            if isinstance(value, dict):  # an AddedToken as transformers saves it
                value = value.get("content")
            if isinstance(value, str):
                special[name] = value
        return cls(source, special)

    @cached_property
    def _compiled(self) -> Any:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        def tojson(
            x: Any,
            ensure_ascii: bool = False,
            indent: Any = None,
            separators: Any = None,
            sort_keys: bool = False,
        ) -> str:
            return json.dumps(
                x,
                ensure_ascii=ensure_ascii,
                indent=indent,
                separators=separators,
                sort_keys=sort_keys,
            )

        class Namespace(jinja2.utils.Namespace):
            """jinja2's namespace, refusing underscore attributes (no way to CPython internals)."""

            def __init__(*args: Any, **kwargs: Any) -> None:
                self, args = args[0], args[1:]
                attrs = dict(*args, **kwargs)
                for name in attrs:
                    Namespace._check(name)
                jinja2.utils.Namespace.__init__(self, attrs)

            def __setitem__(self, name: str, value: Any) -> None:
                Namespace._check(name)
                jinja2.utils.Namespace.__setitem__(self, name, value)

            @staticmethod
            def _check(name: Any) -> None:
                if isinstance(name, str) and name.startswith("_"):
                    raise jinja2.exceptions.SecurityError(
                        f"a chat template cannot set the attribute {name!r} on a namespace"
                    )

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.globals["dict"] = _Dict()
        env.globals["namespace"] = Namespace
        try:
            return env.from_string(self.source)
        except jinja2.exceptions.TemplateError as exc:
            raise ChatTemplateError(f"the chat template does not compile: {exc}") from None

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation (`messages` of plain JSON values)."""
        import jinja2

        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            return self._compiled.render(
                messages=chat,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except jinja2.exceptions.TemplateError as exc:
            raise ChatTemplateError(f"the chat template refuses these messages: {exc}") from None

    def encode(self, tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
        """Prompt token ids of a conversation, followed by the assistant's turn header: the
        rendered text encoded without special tokens added (the template writes them)."""
        return list(tokenizer.encode(self.render(messages), add_special_tokens=False).ids)
