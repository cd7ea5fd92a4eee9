"""Incremental detokenization of one generated row, with stop strings (:class:`RowText`).
Split out of ``runtime.generate``, which still exports it."""

from __future__ import annotations


class RowText:
    """Incremental detokenization of one row, with stop strings.

    ``push`` returns the text that is safe to show now: never a partial UTF-8 character, never
    a tail that might be the start of a stop string. The text drops leading whitespace (the
    model emits answers as ``" " + target``), so the pieces add up to the final ``text``.

    ``text`` is always what decoding all of the row's ids at once gives, but a token costs a
    decode of a few ids, not of all of them: the ids up to a point where the text ended on a
    whole character are settled (their text cannot change), and each token decodes only the
    ids after the last settled group, with that group before them for context (a tokenizer
    that treats the first token specially treats both decodes alike); the new text is what
    that decode adds to the context's own. A decode that does not start with its context's
    text (a tokenizer whose text is not built left to right) falls back to decoding all ids.
    Stop strings are searched in the new text and the few settled characters before it.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tok = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.emitted = 0
        self.stopped = False
        self._keep = max((len(s) for s in stop), default=1) - 1  # settled chars a stop string may need
        self._settled: list[str] = []  # the settled text (of ids[:_end]), in pieces
        self._settled_len = 0
        self._recent = ""  # its last _keep characters
        self._start = self._end = 0  # the context ids[_start:_end]; settled up to _end
        self._context = ""  # decode(ids[_start:_end])
        self._tail = ""  # the text of ids[_end:]: the whole text is settled + tail
        self._lead: int | None = None  # leading whitespace of the whole text, once that has more
        self._final: str | None = None  # the text once a stop string cut it

    @property
    def text(self) -> str:
        if self._final is not None:
            return self._final
        return ("".join(self._settled) + self._tail)[self._lead_now():]

    def _decode(self, start: int) -> str:
        return self.tok.decode(self.ids[start:], skip_special_tokens=True)

    def _lead_now(self) -> int:
        """Leading whitespace characters of the whole text (all of them while it is only that)."""
        if self._lead is not None:
            return self._lead
        return self._settled_len + len(self._tail) - len(self._tail.lstrip())

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        new = self._decode(self._start)
        if new.startswith(self._context):
            self._tail = new[len(self._context):]
        else:  # not built left to right here: start over from the whole text
            self._settled, self._settled_len, self._recent = [], 0, ""
            self._start = self._end = 0
            self._context, self._tail = "", self._decode(0)
        lead = self._lead_now()
        # the window: the last settled characters (a stop string's start) and the new text
        base = self._settled_len - len(self._recent)
        window = self._recent + self._tail
        size = self._settled_len + len(self._tail) - lead  # len(text)
        # no stop string lies inside the settled text (the last push searched it)
        frm = max(lead, self._settled_len - self._keep) - base
        cut = min((k for k in (window.find(s, frm) for s in self.stop) if k >= 0), default=-1)
        if cut >= 0:
            end = base + cut - lead
            piece = self._slice(window, base, lead, end)
            self._final, self.stopped = self.text[:end], True
            return piece
        safe = size - (len(self._tail) - len(self._tail.rstrip("\ufffd")))  # an incomplete character
        hold = max((n for s in self.stop for n in range(1, min(len(s), safe + 1))
                    if window.endswith(s[:n], 0, safe + lead - base)), default=0)  # may grow into a stop string
        piece = self._slice(window, base, lead, safe - hold)
        if self._tail and not self._tail.endswith("\ufffd"):  # new text ending on a whole character
            self._settle(lead)
        return piece

    def _settle(self, lead: int) -> None:
        tail = self._tail
        self._settled.append(tail)
        self._settled_len += len(tail)
        if self._keep:
            self._recent = (self._recent + tail)[-self._keep:]
        if self._lead is None and tail.strip():
            self._lead = lead
        self._start, self._end = self._end, len(self.ids)
        self._context, self._tail = self._decode(self._start), ""

    def _slice(self, window: str, base: int, lead: int, upto: int) -> str:
        """Emit text[emitted:upto] (text positions), read from the window when it covers them."""
        upto = max(upto, self.emitted)
        a, b = self.emitted + lead - base, upto + lead - base
        piece = window[a:b] if a >= 0 else self.text[self.emitted:upto]
        self.emitted = upto
        return piece

    def finish(self) -> str:
        text = self.text
        piece = text[self.emitted:] if len(text) > self.emitted else ""
        self.emitted = max(self.emitted, len(text))
        return piece
