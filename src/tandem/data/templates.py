"""Chat templates a recipe can set (``data.chat_template``): a named template or a file.

Without ``data.chat_template`` the tokenizer's own template is used, and a tokenizer without one gets
tandem's plain fallback (:func:`tandem.data.encode.render_fallback`). With it, the template replaces the
tokenizer's (it is saved with the tokenizer in ``final/``, so generation renders prompts the same way).

Named templates (:data:`NAMED_TEMPLATES`): ``chatml`` (``<|im_start|>role ... <|im_end|>``), ``llama3``
(``<|start_header_id|>role<|end_header_id|> ... <|eot_id|>``, BOS first) and ``zephyr`` (``<|role|>`` turns,
each ended by the EOS token). The marker strings are plain text to a tokenizer that does not have them as
special tokens; the reply the encoder labels always ends with the tokenizer's EOS token.

A file is read as UTF-8 Jinja text (``.jinja``, ``.j2``, ``.txt``, ...), or, for ``.json`` files (a
``tokenizer_config.json``), its ``chat_template`` field. A template that does not compile is refused with a
:class:`~tandem.data.errors.DataError` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tandem.data.errors import DataError

NAMED_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}

_KEY = "data.chat_template"


def _compile(text: str, what: str) -> None:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=["jinja2.ext.loopcontrols"]).from_string(text)
    except jinja2.TemplateError as e:
        line = f" (line {e.lineno})" if isinstance(e, jinja2.TemplateSyntaxError) else ""
        raise DataError(f"{_KEY} {what}: not a valid Jinja chat template{line}: {e}") from None


def resolve_chat_template(spec: str) -> str:
    """The Jinja text ``spec`` names: a key of :data:`NAMED_TEMPLATES` or a file (see the module docstring)."""
    if spec in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(f"{_KEY}: {spec!r} is neither a named template ({', '.join(NAMED_TEMPLATES)}) nor a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{_KEY} {path}: not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        try:
            value = json.loads(text).get("chat_template") if text.strip().startswith("{") else None
        except json.JSONDecodeError as e:
            raise DataError(f"{_KEY} {path}: malformed JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{_KEY} {path}: a JSON file without a 'chat_template' string")
        text = value
    if not text.strip():
        raise DataError(f"{_KEY} {path}: empty file")
    _compile(text, str(path))
    return text


def ensure_chat_template(tokenizer) -> bool:
    """Give a tokenizer without a chat template tandem's fallback (:data:`tandem.data.encode.FALLBACK_TEMPLATE`),
    with one warning line; it is saved with the model, so ``apply_chat_template`` on the trained model renders
    prompts as training did. Returns True when the fallback was set."""
    import logging

    from tandem.data.encode import FALLBACK_TEMPLATE

    if tokenizer.chat_template:
        return False
    tokenizer.chat_template = FALLBACK_TEMPLATE
    logging.getLogger("tandem").warning(
        "the tokenizer has no chat template: tandem uses its plain fallback template ('### User:\\n...\\n\\n### "
        "Assistant:\\n', BOS first) and saves it with the model in final/; set data.chat_template (chatml, llama3, "
        "zephyr or a file) to choose another")
    return True


def set_chat_template(tokenizer, spec: str | None) -> None:
    """Give ``tokenizer`` the template ``spec`` names (``None``: leave it as it is); a template that cannot
    render a one-turn conversation is refused."""
    if spec is None:
        return
    import jinja2

    tokenizer.chat_template = resolve_chat_template(spec)
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    except jinja2.TemplateError as e:
        raise DataError(f"{_KEY} {spec}: the template fails on a one-turn conversation: {e}") from None
