#!/usr/bin/env python3
"""A real model behind Ollama's HTTP API, for macha's tests.

Ollama cannot be installed where macha's tests run (it is fetched from its
own site, not from a package registry), but llama.cpp, the engine under
Ollama, can: llama-cpp-python builds it from PyPI. This server loads one
GGUF file with it and answers the routes macha uses the way Ollama answers
them, so that macha's own client code is exercised against a model that
really reads the prompt and really writes the answer:

    GET  /                 "Ollama is running"
    GET  /api/version      {"version": ...}
    GET  /api/tags         the one model, under the name given with --name
    POST /api/show         details, model_info from the GGUF, capabilities
    POST /api/chat         streaming (NDJSON) or not; format "json" or a JSON
                           schema as grammar-constrained decoding; options
    POST /api/embed        mean-pooled, normalised embeddings (loaded lazily)

Everything else is 404 "404 page not found", as Ollama's router answers.
Requests that run the model are served one at a time, as by one Ollama
runner; the others wait. The behaviour copied from Ollama, and where this
server differs, is listed in tests/llm/README.md.

Usage (the venv made by tests/llm/setup.sh):
    python ollama_server.py --model-file F.gguf --name gemma3:270m --port 0
prints "listening on http://127.0.0.1:PORT" on stdout once the model is
loaded, and one line per request on stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import http.server
import ipaddress
import json
import math
import os
import random
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Optional

# llama.cpp's threads meet at an OpenMP barrier after every operation, and by
# default wait for each other spinning. On a machine whose cores are busy with
# something else (a test suite on 2 cores), a spinning thread keeps the one it
# waits for off the core: measured here with other builds running, a token
# took 200 to 615 ms spinning and 25 to 37 ms waiting passively. (On idle
# cores spinning may be a little faster; no idle machine was at hand to
# measure it.) Set before llama.cpp (and its libgomp) is loaded; a value
# given in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np
import llama_cpp

# The version of Ollama whose behaviour this server reproduces (its server/
# routes.go, server/prompt.go, llm/llama_server.go and api/types.go were read).
OLLAMA_VERSION = "0.33.0"

# Ollama's gemma3 model in its library: the chat template and the parameters
# its Modelfile sets (`ollama show gemma3 --modelfile`). A system message is an
# ordinary user turn; the last turn opens the model's answer.
GEMMA3_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""
GEMMA3_PARAMETERS: dict[str, Any] = {
    "stop": ["<end_of_turn>"],
    "temperature": 1.0,
    "top_k": 64,
    "top_p": 0.95,
}

# api.DefaultOptions() of Ollama: what a request gets for an option that
# neither it nor the model's Modelfile sets.
OLLAMA_DEFAULTS: dict[str, Any] = {
    "num_predict": -1,
    "num_keep": 4,
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": -1,
    "stop": [],
}
# The options this server acts on, with the Go type Ollama decodes each into
# (a value of another JSON type is refused as Ollama refuses it). Ollama's
# other options (num_gpu, use_mmap, ...) are accepted and ignored here.
OPTION_TYPES = {
    "num_ctx": "integer",
    "num_predict": "integer",
    "num_keep": "integer",
    "seed": "integer",
    "top_k": "integer",
    "repeat_last_n": "integer",
    "num_batch": "integer",
    "num_thread": "integer",
    "num_gpu": "integer",
    "main_gpu": "integer",
    "temperature": "float32",
    "top_p": "float32",
    "min_p": "float32",
    "typical_p": "float32",
    "repeat_penalty": "float32",
    "presence_penalty": "float32",
    "frequency_penalty": "float32",
    "stop": "array",
    "use_mmap": "boolean",
}

# Ollama (llm/llama_server.go) ends a generation whose content repeats the
# same piece, spaces trimmed, more than this many times in a row.
TOKEN_REPEAT_LIMIT = 30
# ... and bounds an open-ended num_predict to this many context lengths.
OPEN_ENDED_CONTEXTS = 10

# llama.cpp's file types, named as Ollama names them in `details`.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
    15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}

# A general JSON grammar for `format: "json"` (llama.cpp's own, shipped with
# llama-cpp-python); a schema is compiled by llama.cpp's C++ converter (see
# `Converter`).
JSON_GRAMMAR = llama_cpp.llama_grammar.JSON_GBNF


class Converter:
    """llama.cpp's C++ JSON-schema-to-grammar converter, the one llama-server
    runs for a json_schema and so for an Ollama `format`, compiled by
    tests/llm/setup.sh (converter.cpp) from the same llama.cpp sources as the
    package. llama-cpp-python's own Python port differs: it drops integer
    ranges and nests bounded repetitions until llama.cpp's grammar parser
    refuses macha's schema."""

    def __init__(self, path: str):
        # Loaded after llama_cpp, whose libraries it links against.
        self.lib = ctypes.CDLL(path)
        self.lib.macha_schema_to_grammar.restype = ctypes.c_void_p
        self.lib.macha_schema_to_grammar.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        self.lib.macha_free.argtypes = [ctypes.c_void_p]

    def _take(self, pointer: int) -> str:
        try:
            return ctypes.string_at(pointer).decode("utf-8", "replace")
        finally:
            self.lib.macha_free(pointer)

    def grammar(self, schema: Any) -> str:
        """The grammar for `schema`; ValueError with the converter's words
        when it refuses the schema."""
        error = ctypes.c_void_p()
        text = json.dumps(schema).encode()
        grammar = self.lib.macha_schema_to_grammar(text, ctypes.byref(error))
        if not grammar:
            raise ValueError(self._take(error.value) if error.value else "the converter failed")
        return self._take(grammar)


MAX_BODY = 64 << 20

PROMPT_TOO_LONG = ("the prompt is longer than the context length currently available to the model; shorten the "
                   "prompt, adjust the context length in settings, or use a model with a longer context length")


def log(line: str) -> None:
    print(f"ollama-server: {line}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Go's JSON, as a client of Ollama sees it


def go_json(value: Any) -> bytes:
    """json.Marshal's output: compact, UTF-8, and <, >, & and the two line
    separators escaped, as Go escapes them inside strings."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text.encode()


def go_time(ns: Optional[int] = None, utc: bool = True) -> str:
    """time.Time in RFC 3339 with nanoseconds, trailing zeros cut, as Go
    marshals it (UTC for `created_at`, local for file times)."""
    ns = time.time_ns() if ns is None else ns
    seconds, frac = divmod(ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, timezone.utc if utc else None)
    if not utc:
        moment = moment.astimezone()
    fraction = f".{frac:09d}".rstrip("0").rstrip(".")
    zone = "Z" if utc or not moment.utcoffset() else moment.strftime("%z")
    if zone != "Z":
        zone = zone[:3] + ":" + zone[3:]
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone


def go_quote(text: str) -> str:
    """Go's %q of a string (close enough for the ASCII Ollama quotes)."""
    return json.dumps(text, ensure_ascii=False)


GO_KINDS = {type(None): "null", bool: "bool", int: "number", float: "number",
            str: "string", list: "array", dict: "object"}


def go_kind(value: Any) -> str:
    return GO_KINDS[type(value)]


class RequestError(Exception):
    """An answer of {"error": text} with an HTTP status."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


def decode_body(body: bytes) -> Any:
    """The request's JSON, or the 400 Ollama's decoder gives."""
    if not body.strip():
        raise RequestError(400, "missing request body")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise RequestError(400, "invalid character in request body")
    except json.JSONDecodeError as e:
        if e.pos >= len(e.doc.rstrip()):
            raise RequestError(400, "unexpected EOF")
        char = e.doc[e.pos]
        if e.msg.startswith("Expecting value"):
            raise RequestError(400, f"invalid character {char!r} looking for beginning of value")
        raise RequestError(400, f"invalid character {char!r} {e.msg[0].lower()}{e.msg[1:]}")


def unmarshal_error(value: Any, field_name: str, go_type: str) -> RequestError:
    return RequestError(400, f"json: cannot unmarshal {go_kind(value)} into Go struct field {field_name} of type {go_type}")


def field_of(request: dict, key: str, kinds: tuple, field_name: str, go_type: str) -> Any:
    """A request field of one of `kinds`, None when absent or null."""
    value = request.get(key)
    if value is None:
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise unmarshal_error(value, field_name, go_type)
    return value


def parse_options(raw: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """Options as Ollama's Options.FromMap reads them over the defaults:
    unknown keys ignored, a value of the wrong type refused (500, as the
    scheduler reports it), numbers truncated to integers where Go wants one."""
    options = dict(defaults)
    if raw is None:
        return options
    if not isinstance(raw, dict):
        raise unmarshal_error(raw, "ChatRequest.options", "map[string]interface {}")
    for key, value in raw.items():
        kind = OPTION_TYPES.get(key)
        if kind is None or value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "integer" and number:
            options[key] = int(value)
        elif kind == "float32" and number:
            options[key] = float(value)
        elif kind == "boolean" and isinstance(value, bool):
            options[key] = value
        elif kind == "array" and isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise RequestError(500, f"option {go_quote(key)} must be of an array of strings")
            options[key] = list(value)
        else:
            raise RequestError(500, f"option {go_quote(key)} must be of type {kind}")
    return options


# ---------------------------------------------------------------------------
# Names, as Ollama resolves them


def full_name(name: str) -> str:
    """registry.ollama.ai/library/NAME:TAG for a short name (tag defaults to
    latest), as Ollama's model.ParseName fills in the parts."""
    host, namespace = "registry.ollama.ai", "library"
    parts = name.split("/")
    model = parts[-1]
    if len(parts) == 2:
        namespace = parts[0]
    elif len(parts) >= 3:
        host, namespace = parts[-3], parts[-2]
    if ":" not in model:
        model += ":latest"
    return f"{host}/{namespace}/{model}"


def shortest_name(name: str) -> str:
    """Name.DisplayShortest: the tag always, the default host and namespace never."""
    host, namespace, model = full_name(name).split("/", 2)
    if host.lower() != "registry.ollama.ai":
        return f"{host}/{namespace}/{model}"
    if namespace.lower() != "library":
        return f"{namespace}/{model}"
    return model


# ---------------------------------------------------------------------------
# The model


def gemma3_prompt(messages: list[dict]) -> str:
    """Renders GEMMA3_TEMPLATE; roles it has no branch for (tool) render
    nothing, as in Ollama."""
    out = []
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        role, content = m["role"], m["content"]
        if role in ("user", "system"):
            out.append(f"<start_of_turn>user\n{content}<end_of_turn>\n")
            if last:
                out.append("<start_of_turn>model\n")
        elif role == "assistant":
            out.append(f"<start_of_turn>model\n{content}")
            if not last:
                out.append("<end_of_turn>\n")
    return "".join(out)


@dataclass
class Facts:
    """What /api/tags and /api/show say about the model, read once."""

    arch: str
    context_length: int
    parameter_count: int
    file_type: str
    size: int
    digest: str
    modified_at: str
    model_info: dict[str, Any]


def metadata_value(text: str) -> Any:
    """GGUF metadata comes from llama.cpp as text; Ollama shows it typed."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def unit_float32(vector: np.ndarray) -> list[float]:
    """The vector scaled to length 1, as float32 numbers written the way Go
    writes a float32 (its shortest decimal, not a float64's 17 digits)."""
    vector = vector / max(math.sqrt(float(np.sum(vector * vector))), 1e-12)
    return [float(v) for v in vector.astype(np.float32).astype(str)]


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Generation:
    """One chat's outcome, filled in while it runs."""

    prompt_tokens: int = 0
    # Of those, how many the cache held from the last prompt.
    cached_tokens: int = 0
    prompt_eval_ns: int = 0
    eval_count: int = 0
    eval_ns: int = 0
    load_ns: int = 0
    # "stop", "length", or None when Ollama's repeat guard ended it.
    done_reason: Optional[str] = "stop"


class ClientGone(Exception):
    """The client closed its connection; Ollama cancels the generation."""


class Sampler:
    """Picks each next token as llama.cpp's common sampler does, the one
    llama-server (and so Ollama) uses: the sampling chain chooses first and
    the grammar only checks that one token; only when it refuses is the
    choice made again among the tokens the grammar allows. (llama-cpp-
    python's own loop applies the grammar to all of Gemma's 262 144 tokens at
    every step: measured here, half a second a token.)

    One shortcut, for speed: that second choice looks for the allowed tokens
    among the model's 1 024 most likely ones first, and takes them if there
    are top_k of them; else among the 16 384 most likely, taking them if
    there is one; and reads the whole vocabulary only when there is none.
    The full pass costs about 70 ms here, and macha's answers meet a refusal
    about once in six tokens; with the shortcut a refusal costs about 14 ms.
    What it can leave out are allowed tokens ranked below 16 384, which
    top_k and top_p would keep only if the model spread its probability
    almost evenly over the vocabulary."""

    DTYPE = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
    SCAN = (1024, 16384)

    def __init__(self, llm: llama_cpp.Llama, options: dict[str, Any], seed: int, grammar: Optional[str]):
        self.ctx = llm.ctx
        self.n_vocab = llm.n_vocab()
        self.top_k = options["top_k"] if options["temperature"] > 0 else 1
        self.penalties = llama_cpp.llama_sampler_init_penalties(
            self.n_vocab, options["repeat_last_n"], options["repeat_penalty"],
            options["frequency_penalty"], options["presence_penalty"])
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.grammar = None
        add = lambda sampler: llama_cpp.llama_sampler_chain_add(self.chain, sampler)
        # After the penalties, the order of llama-server's default chain, less
        # the samplers Ollama leaves off (DRY, XTC, top-n-sigma).
        if options["temperature"] <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            add(llama_cpp.llama_sampler_init_top_k(options["top_k"]))
            add(llama_cpp.llama_sampler_init_typical(options["typical_p"], 1))
            add(llama_cpp.llama_sampler_init_top_p(options["top_p"], 1))
            add(llama_cpp.llama_sampler_init_min_p(options["min_p"], 1))
            add(llama_cpp.llama_sampler_init_temp(options["temperature"]))
            add(llama_cpp.llama_sampler_init_dist(seed))
        if grammar is not None:
            self.grammar = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, grammar.encode(), b"root")
            if not self.grammar:
                self.close()
                raise RequestError(400, "failed to parse the grammar made from the format")
        self.buffer = (llama_cpp.llama_token_data * self.n_vocab)()
        self.view = np.frombuffer(self.buffer, dtype=self.DTYPE)
        self.ids = np.arange(self.n_vocab, dtype=np.int32)

    def array(self, size: int) -> llama_cpp.llama_token_data_array:
        data = ctypes.cast(self.buffer, llama_cpp.llama_token_data_p)
        return llama_cpp.llama_token_data_array(data=data, size=size, selected=-1, sorted=False)

    def candidates(self) -> llama_cpp.llama_token_data_array:
        """Every token with its logit after the last evaluated one, the
        penalties applied (the samplers reorder the array, so it is filled
        anew each time)."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
        self.view["id"] = self.ids
        self.view["logit"] = logits
        self.view["p"] = 0.0
        cur = self.array(self.n_vocab)
        llama_cpp.llama_sampler_apply(self.penalties, ctypes.byref(cur))
        return cur

    def allowed(self, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Which of these tokens the grammar allows next."""
        size = len(ids)
        self.view[:size]["id"] = ids
        self.view[:size]["logit"] = logits
        self.view[:size]["p"] = 0.0
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(self.array(size)))
        return self.view[:size]["logit"] != -np.inf

    def resample(self) -> int:
        """The choice among the tokens the grammar allows."""
        self.candidates()
        logits = self.view["logit"].copy()  # in token order, penalties applied
        keep = None
        for scan, enough in ((self.SCAN[0], max(self.top_k, 1)), (self.SCAN[1], 1)):
            top = np.argpartition(-logits, scan)[:scan]
            found = top[self.allowed(top.astype(np.int32), logits[top])]
            if len(found) >= enough:
                keep = found
                break
        if keep is None:
            keep = self.ids[self.allowed(self.ids, logits)]
        size = len(keep)
        self.view[:size]["id"] = keep
        self.view[:size]["logit"] = logits[keep]
        self.view[:size]["p"] = 0.0
        cur = self.array(size)
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(cur))
        return cur.data[cur.selected].id

    def sample(self) -> int:
        cur = self.candidates()
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(cur))
        token = cur.data[cur.selected].id
        if self.grammar is not None:
            if not self.allowed(np.array([token], dtype=np.int32), np.zeros(1, dtype=np.float32))[0]:
                token = self.resample()
            llama_cpp.llama_sampler_accept(self.grammar, token)
        llama_cpp.llama_sampler_accept(self.penalties, token)
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token

    def close(self) -> None:
        for sampler in (self.chain, self.grammar, self.penalties):
            if sampler:
                llama_cpp.llama_sampler_free(sampler)
        self.chain = self.grammar = self.penalties = None


class Runner:
    """The loaded model, used by one request at a time (`lock`)."""

    def __init__(self, model_file: str, threads: int, ctx: int, batch: int, flash_attn: bool):
        self.model_file = model_file
        self.threads = threads
        self.batch = batch
        self.flash_attn = flash_attn
        self.lock = threading.Lock()
        self.llm: Optional[llama_cpp.Llama] = None
        self.embedder: Optional[llama_cpp.Llama] = None
        started = time.monotonic_ns()
        self.load(ctx)
        assert self.llm is not None
        meta = self.llm.metadata
        arch = meta.get("general.architecture", "")
        if arch != "gemma3":
            raise SystemExit(f"{model_file}: architecture {arch!r}; this server renders prompts with "
                             "Ollama's gemma3 template and serves gemma3 models only")
        info: dict[str, Any] = {k: metadata_value(v) for k, v in sorted(meta.items())
                                if k.startswith(("general.", arch + ".", "tokenizer.ggml."))}
        info["general.parameter_count"] = self.llm._model.n_params()
        stat = os.stat(model_file)
        self.facts = Facts(
            arch=arch,
            context_length=self.llm._model.n_ctx_train(),
            parameter_count=info["general.parameter_count"],
            file_type=FILE_TYPES.get(int(meta.get("general.file_type", -1)), "unknown"),
            size=stat.st_size,
            digest=sha256_of(model_file),
            modified_at=go_time(stat.st_mtime_ns, utc=False),
            model_info=info,
        )
        log(f"loaded {model_file} ({arch}, {self.facts.parameter_count} parameters, "
            f"context {self.facts.context_length}) in {(time.monotonic_ns() - started) // 1_000_000} ms; "
            f"{llama_cpp.llama_print_system_info().decode().strip()}")

    def load(self, n_ctx: int) -> int:
        """(Re)loads the model for a context of n_ctx tokens, as Ollama
        reloads its runner when a request asks for another num_ctx; returns
        the nanoseconds it took (0 when already loaded so)."""
        if self.llm is not None and self.llm.n_ctx() == n_ctx:
            return 0
        started = time.monotonic_ns()
        if self.llm is not None:
            self.llm.close()
            self.llm = None
        self.llm = llama_cpp.Llama(
            model_path=self.model_file,
            n_ctx=n_ctx,
            n_batch=min(self.batch, n_ctx),
            n_ubatch=min(self.batch, n_ctx),
            n_threads=self.threads,
            n_threads_batch=self.threads,
            flash_attn=self.flash_attn,
            # Keeps the whole sliding-window cache, so that a prompt sharing a
            # prefix with the last one (the same system prompt) reuses it.
            swa_full=True,
            verbose=False,
        )
        return time.monotonic_ns() - started

    def context_for(self, requested: Optional[int], default: int) -> int:
        """num_ctx as Ollama uses it: the request's, capped at what the model
        was trained for."""
        wanted = requested if requested and requested > 0 else default
        return max(1, min(wanted, self.facts.context_length))

    def tokens(self, text: str) -> list[int]:
        assert self.llm is not None
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    def fit_prompt(self, messages: list[dict], num_ctx: int, num_keep: int, truncate: bool, shift: bool) -> list[int]:
        """The prompt's tokens, cut to the context as Ollama cuts it: whole
        messages dropped from the front (system messages kept, the last
        message always); then, if the rest is still too long, tokens dropped
        after the first num_keep (plus BOS) down to about half the context,
        or, with context shift off, a 400."""
        start = 0
        tokens: list[int] = []
        for start in range(len(messages)):
            kept = [m for m in messages[:start] if m["role"] == "system"] + messages[start:]
            tokens = self.tokens(gemma3_prompt(kept))
            if not truncate or len(tokens) <= num_ctx:
                break
        if start:
            log(f"truncating input messages which exceed context length: dropped {start} of {len(messages)}")
        if len(tokens) > num_ctx - 1 and truncate:
            if not shift:
                raise RequestError(400, PROMPT_TOO_LONG)
            keep = min((len(tokens) if num_keep < 0 else num_keep) + 1, num_ctx - 1)
            limit = num_ctx - max((num_ctx - keep) // 2, 1)
            log(f"truncating input prompt: limit {limit}, prompt {len(tokens)}, keep {keep}")
            tokens = tokens[:keep] + tokens[len(tokens) - (limit - keep):]
        return tokens

    def evaluate_prompt(self, tokens: list[int]) -> int:
        """Evaluates the prompt, reusing the cached part it shares with the
        last one (at least its last token is evaluated, for the logits);
        returns how many tokens were reused."""
        llm = self.llm
        assert llm is not None
        reuse = 0
        for cached, new in zip(llm._input_ids.tolist(), tokens[:-1]):
            if cached != new:
                break
            reuse += 1
        if reuse and not llm._ctx.kv_cache_seq_rm(-1, reuse, -1):
            reuse = 0
        if reuse:
            llm.n_tokens = reuse
        else:
            llm.reset()
        llm.eval(tokens[reuse:])
        return reuse

    def generate(self, tokens: list[int], options: dict[str, Any], grammar: Optional[str],
                 outcome: Generation, alive: Callable[[], bool]) -> Iterator[str]:
        """Samples an answer to `tokens`, yielding each piece of text as it
        is made; fills `outcome`. Stops at an end-of-generation token, a stop
        string, num_predict, a full context, or Ollama's repeat guard."""
        llm = self.llm
        assert llm is not None
        n_ctx = llm.n_ctx()
        if len(tokens) >= n_ctx:
            raise RequestError(400, PROMPT_TOO_LONG)
        num_predict = options["num_predict"]
        if num_predict < 0 or num_predict > OPEN_ENDED_CONTEXTS * n_ctx:
            num_predict = OPEN_ENDED_CONTEXTS * n_ctx
        seed = options["seed"] if options["seed"] >= 0 else random.getrandbits(32)
        stops = [s for s in options["stop"] if s]
        vocab = llm._model.vocab

        outcome.prompt_tokens = len(tokens)
        started = time.monotonic_ns()
        sampler = Sampler(llm, options, seed, grammar)
        produced: list[int] = []
        pending = b""  # bytes not yet valid UTF-8
        held = ""  # text that may be the start of a stop string
        last_piece, repeats = None, 0
        outcome.done_reason = "length"
        try:
            outcome.cached_tokens = self.evaluate_prompt(tokens)
            first_at = time.monotonic_ns()
            outcome.prompt_eval_ns = first_at - started
            while len(produced) < num_predict:
                token = sampler.sample()
                outcome.eval_count += 1
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    outcome.done_reason = "stop"
                    break
                pending += llm.detokenize([token], prev_tokens=tokens + produced)
                produced.append(token)
                try:
                    text, pending = pending.decode(), b""
                except UnicodeDecodeError as e:
                    # A character cut between tokens waits for its end.
                    text, pending = pending[: e.start].decode(), pending[e.start:]
                if text:
                    held += text
                    stop_at = min((held.find(s) for s in stops if s in held), default=-1)
                    if stop_at >= 0:
                        if stop_at:
                            yield held[:stop_at]
                        held = ""
                        outcome.done_reason = "stop"
                        break
                    # Hold back the longest tail that could begin a stop string.
                    hold = max((n for s in stops for n in range(min(len(s) - 1, len(held)), 0, -1)
                                if held.endswith(s[:n])), default=0)
                    out, held = held[: len(held) - hold], held[len(held) - hold:]
                    if out:
                        trimmed = out.strip()
                        repeats = repeats + 1 if trimmed == last_piece else 0
                        last_piece = trimmed
                        yield out
                        if repeats > TOKEN_REPEAT_LIMIT:
                            log("prediction aborted, token repeat limit reached")
                            outcome.done_reason = None
                            break
                if len(tokens) + len(produced) >= n_ctx:
                    break
                if len(produced) % 8 == 0 and not alive():
                    raise ClientGone()
                llm.eval([token])
            if held and outcome.done_reason is not None:
                yield held
            outcome.eval_ns = time.monotonic_ns() - first_at
        finally:
            sampler.close()

    def embed(self, text: str, num_ctx: int, truncate: bool) -> tuple[list[float], int]:
        """A mean-pooled embedding of `text`, L2-normalised as Ollama
        normalises it, and the number of tokens it took."""
        if self.embedder is None or self.embedder.n_ctx() != num_ctx:
            if self.embedder is not None:
                self.embedder.close()
            self.embedder = llama_cpp.Llama(
                model_path=self.model_file,
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                n_ctx=num_ctx,
                n_batch=num_ctx,
                n_ubatch=num_ctx,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                verbose=False,
            )
        tokens = self.embedder.tokenize(text.encode(), add_bos=True, special=False)
        if len(tokens) > num_ctx:
            if not truncate:
                raise RequestError(400, "the input length exceeds the context length")
            text = self.embedder.detokenize(tokens[1:num_ctx]).decode(errors="ignore")
        vector, count = self.embedder.embed(text, return_count=True)
        array = np.asarray(vector, dtype=np.float64)
        if not np.all(np.isfinite(array)):
            raise RequestError(400, "embedding contains NaN or Inf values")
        return unit_float32(array), count


# ---------------------------------------------------------------------------
# The routes


@dataclass
class Reply:
    """What a route answers: a JSON body, or a stream of JSON lines."""

    status: int = 200
    body: Any = None
    text: Optional[str] = None
    content_type: str = "application/json; charset=utf-8"
    stream: Optional[Iterator[Any]] = None
    # Said about the request in the log line, once it is answered.
    note: Callable[[], str] = lambda: ""


class Api:
    """The routes: each takes the decoded request and returns a `Reply` or
    raises `RequestError`, in the order and wording of Ollama's handlers."""

    def __init__(self, runner: Runner, converter: Converter, name: str, default_ctx: int):
        self.runner = runner
        self.converter = converter
        self.name = name
        self.default_ctx = default_ctx

    def is_ours(self, name: str) -> bool:
        # Ollama's names compare without regard to case.
        return bool(name) and full_name(name).lower() == full_name(self.name).lower()

    def details(self) -> dict[str, Any]:
        f = self.runner.facts
        n = f.parameter_count
        if n >= 1e9:
            size = f"{n / 1e9:.0f}B" if n % 1_000_000_000 == 0 else f"{n / 1e9:.1f}B"
        else:
            size = f"{n / 1e6:.0f}M" if n % 1_000_000 == 0 else f"{n / 1e6:.2f}M"
        return {
            "parent_model": "",
            "format": "gguf",
            "family": f.arch,
            "families": [f.arch],
            "parameter_size": size,
            "quantization_level": f.file_type,
        }

    def version(self) -> Reply:
        return Reply(body={"version": OLLAMA_VERSION})

    def tags(self) -> Reply:
        f = self.runner.facts
        model = {
            "name": self.name,
            "model": self.name,
            "modified_at": f.modified_at,
            "size": f.size,
            "digest": f.digest,
            "details": self.details(),
        }
        return Reply(body={"models": [model]})

    def show(self, request: Any) -> Reply:
        if not isinstance(request, dict):
            raise RequestError(400, f"json: cannot unmarshal {go_kind(request)} into Go value of type api.ShowRequest")
        model = field_of(request, "model", (str,), "ShowRequest.model", "string") or ""
        name = field_of(request, "name", (str,), "ShowRequest.name", "string") or ""
        wanted = model or name
        if not wanted:
            raise RequestError(400, "model is required")
        if not self.is_ours(wanted):
            raise RequestError(404, f"model '{shortest_name(wanted)}' not found")
        f = self.runner.facts
        pairs = [(key, v) for key, value in GEMMA3_PARAMETERS.items()
                 for v in (value if isinstance(value, list) else [value])]
        shown = lambda v: f"{v:g}" if isinstance(v, float) else str(v)
        parameters = [f"{key:<30} {go_quote(v) if isinstance(v, str) else shown(v)}" for key, v in pairs]
        modelfile_params = "".join(f"PARAMETER {key} {shown(v)}\n" for key, v in pairs)
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {shortest_name(self.name)}\n\n"
            f"FROM {os.path.abspath(self.runner.model_file)}\n"
            f'TEMPLATE """{GEMMA3_TEMPLATE}"""\n'
            f"{modelfile_params}"
        )
        body = {
            "license": "",
            "modelfile": modelfile,
            "parameters": "\n".join(parameters),
            "template": GEMMA3_TEMPLATE,
            "details": self.details(),
            "model_info": f.model_info,
            # The template renders no .Tools, no .Suffix, no thinking.
            "capabilities": ["completion"],
            "modified_at": f.modified_at,
        }
        return Reply(body=body)

    def chat(self, request: Any, started: int, alive: Callable[[], bool]) -> Reply:
        """Checks in the order of Ollama's ChatHandler, then answers."""
        if not isinstance(request, dict):
            raise RequestError(400, f"json: cannot unmarshal {go_kind(request)} into Go value of type api.ChatRequest")
        model = field_of(request, "model", (str,), "ChatRequest.model", "string") or ""
        stream = field_of(request, "stream", (bool,), "ChatRequest.stream", "bool")
        stream = True if stream is None else stream
        raw_messages = field_of(request, "messages", (list,), "ChatRequest.messages", "[]api.Message") or []
        messages = []
        for m in raw_messages:
            if not isinstance(m, dict):
                raise unmarshal_error(m, "ChatRequest.messages", "api.Message")
            for key in ("role", "content"):
                field_of(m, key, (str,), f"Message.messages.{key}", "string")
            # Ollama lower-cases the role as it decodes a message.
            messages.append({"role": (m.get("role") or "").lower(), "content": m.get("content") or ""})
        tools = field_of(request, "tools", (list,), "ChatRequest.tools", "api.Tools") or []
        think = request.get("think")
        truncate = field_of(request, "truncate", (bool,), "ChatRequest.truncate", "bool")
        shift = field_of(request, "shift", (bool,), "ChatRequest.shift", "bool")
        fmt = request.get("format")
        keep_alive = request.get("keep_alive")

        if not model:
            raise RequestError(400, "model is required")
        if not self.is_ours(model):
            raise RequestError(404, f"model '{model}' not found")
        if not messages and keep_alive in (0, "0", "0s"):
            return Reply(body=self.empty_answer(model, "unload"))
        if tools:
            raise RequestError(400, f"{full_name(model)} does not support tools")
        if think is True or think in ("high", "medium", "low", "max"):
            raise RequestError(400, f"{go_quote(model)} does not support thinking")

        options = parse_options(request.get("options"), {**OLLAMA_DEFAULTS, **GEMMA3_PARAMETERS})
        num_ctx = self.runner.context_for(options.get("num_ctx"), self.default_ctx)
        if not messages:
            # Only loads the model, and says so in one JSON object whatever
            # `stream` asked.
            with self.runner.lock:
                self.runner.load(num_ctx)
            return Reply(body=self.empty_answer(model, "load"))

        # Ollama checks `format` only when it starts the completion.
        generation = Generation()
        grammar = None
        if fmt not in (None, ""):
            if fmt == "json":
                grammar = JSON_GRAMMAR
            elif isinstance(fmt, dict):
                try:
                    grammar = self.converter.grammar(fmt)
                except ValueError as e:
                    raise RequestError(400, f"failed to convert the JSON schema to a grammar: {e}")
            else:
                raise RequestError(500, f"invalid format: {go_quote(go_json(fmt).decode())}; "
                                        'expected "json" or a valid JSON Schema object')

        def run() -> Iterator[dict[str, Any]]:
            """The answer's chunks, made under the runner's lock, the final
            one with the metrics (none when the repeat guard cut it off)."""
            before_lock = time.monotonic_ns() - started
            with self.runner.lock:
                generation.load_ns = self.runner.load(num_ctx) or before_lock
                tokens = self.runner.fit_prompt(messages, num_ctx, options["num_keep"], truncate is not False,
                                                shift is not False)
                for piece in self.runner.generate(tokens, options, grammar, generation, alive):
                    yield self.message(model, piece)
            if generation.done_reason is None:
                return
            final = self.message(model, "")
            final["done"] = True
            final["done_reason"] = generation.done_reason
            metrics = {
                "total_duration": time.monotonic_ns() - started,
                "load_duration": generation.load_ns,
                "prompt_eval_count": generation.prompt_tokens,
                "prompt_eval_duration": generation.prompt_eval_ns,
                "eval_count": generation.eval_count,
                "eval_duration": generation.eval_ns,
            }
            # Go leaves zero metrics out (omitempty).
            final.update({k: v for k, v in metrics.items() if v})
            yield final

        def note() -> str:
            ms = lambda ns: ns // 1_000_000
            return (f"prompt={generation.prompt_tokens} (cached {generation.cached_tokens}, "
                    f"{ms(generation.prompt_eval_ns)} ms) answer={generation.eval_count} "
                    f"({ms(generation.eval_ns)} ms) done_reason={generation.done_reason}")

        if stream:
            return Reply(content_type="application/x-ndjson", stream=run(), note=note)
        # Not streaming: the last chunk, carrying the whole content.
        last: dict[str, Any] = {}
        content = []
        for chunk in run():
            content.append(chunk["message"]["content"])
            last = chunk
        last["message"]["content"] = "".join(content)
        return Reply(body=last, note=note)

    def embed(self, request: Any, started: int) -> Reply:
        """Checks in the order of Ollama's EmbedHandler, then embeds each
        input with the lazily loaded embedding instance."""
        if not isinstance(request, dict):
            raise RequestError(400, f"json: cannot unmarshal {go_kind(request)} into Go value of type api.EmbedRequest")
        model = field_of(request, "model", (str,), "EmbedRequest.model", "string") or ""
        truncate = field_of(request, "truncate", (bool,), "EmbedRequest.truncate", "bool")
        dimensions = field_of(request, "dimensions", (int,), "EmbedRequest.dimensions", "int") or 0
        raw = request.get("input")
        if isinstance(raw, str):
            inputs = [raw] if raw else []
        elif isinstance(raw, list):
            if not all(isinstance(v, str) for v in raw):
                raise RequestError(400, "invalid input type")
            inputs = list(raw)
        elif raw is None:
            inputs = []
        else:
            raise RequestError(400, "invalid input type")
        if not self.is_ours(model):
            raise RequestError(404, f"model '{model}' not found")
        options = parse_options(request.get("options"), OLLAMA_DEFAULTS)
        num_ctx = self.runner.context_for(options.get("num_ctx"), self.default_ctx)
        if not inputs:
            return Reply(body={"model": model, "embeddings": []})
        embeddings, count = [], 0
        with self.runner.lock:
            loaded = time.monotonic_ns()
            for text in inputs:
                vector, n = self.runner.embed(text, num_ctx, truncate is not False)
                if 0 < dimensions < len(vector):
                    vector = unit_float32(np.asarray(vector[:dimensions], dtype=np.float64))
                embeddings.append(vector)
                count += n
        body = {
            "model": model,
            "embeddings": embeddings,
            "total_duration": time.monotonic_ns() - started,
            "load_duration": loaded - started,
            "prompt_eval_count": count,
        }
        return Reply(body=body, note=lambda: f"inputs={len(inputs)} tokens={count}")

    def empty_answer(self, model: str, reason: str) -> dict[str, Any]:
        return {
            "model": model,
            "created_at": go_time(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": reason,
        }

    def message(self, model: str, content: str) -> dict[str, Any]:
        return {
            "model": model,
            "created_at": go_time(),
            "message": {"role": "assistant", "content": content},
            "done": False,
        }


class Handler(http.server.BaseHTTPRequestHandler):
    """Routes requests to `Api`, speaking HTTP/1.1 with keep-alive as Go's
    server does; streams are sent chunked."""

    protocol_version = "HTTP/1.1"
    api: Api  # set on the subclass made in main()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request is written by `finish_request`

    def send_response(self, code: int, message: Optional[str] = None) -> None:
        # No "Server:" header: Ollama (Go's net/http) sends none.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def do_GET(self) -> None:
        self.route("GET")

    def do_HEAD(self) -> None:
        self.route("HEAD")

    def do_POST(self) -> None:
        self.route("POST")

    # Ollama's router answers a method it has no route for with 404 too.
    def do_PUT(self) -> None:
        self.route("PUT")

    def do_DELETE(self) -> None:
        self.route("DELETE")

    def do_PATCH(self) -> None:
        self.route("PATCH")

    def do_OPTIONS(self) -> None:
        self.route("OPTIONS")

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
                if len(body) > MAX_BODY:
                    raise RequestError(413, "http: request body too large")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise RequestError(413, "http: request body too large")
        return self.rfile.read(length)

    def client_alive(self) -> bool:
        """False once the client has closed its side (Ollama then cancels)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return True
            return self.connection.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            return False

    def route(self, method: str) -> None:
        started = time.monotonic_ns()
        path = self.path.split("?", 1)[0]
        reply: Optional[Reply] = None
        try:
            body = self.read_body() if method in ("POST", "PUT", "PATCH", "DELETE") else b""
            get = method in ("GET", "HEAD")
            if path == "/" and get:
                reply = Reply(text="Ollama is running", content_type="text/plain; charset=utf-8")
            elif path == "/api/version" and get:
                reply = self.api.version()
            elif path == "/api/tags" and get:
                reply = self.api.tags()
            elif path == "/api/show" and method == "POST":
                reply = self.api.show(decode_body(body))
            elif path == "/api/chat" and method == "POST":
                reply = self.api.chat(decode_body(body), started, self.client_alive)
            elif path == "/api/embed" and method == "POST":
                reply = self.api.embed(decode_body(body), started)
            else:
                reply = Reply(status=404, text="404 page not found", content_type="text/plain")
        except RequestError as e:
            reply = Reply(status=e.status, body={"error": e.text})
        except ClientGone:
            self.close_connection = True
            self.log_line(method, path, started, "client closed the connection; generation cancelled")
            return
        except Exception as e:  # a bug or a llama.cpp failure: say so, as a 500
            log(f"{method} {path}: {type(e).__name__}: {e}")
            reply = Reply(status=500, body={"error": str(e)})
        if reply.stream is not None:
            status = self.send_stream(reply)
        else:
            status = self.send_whole(reply, method == "HEAD")
        if status == 499:
            self.log_line(method, path, started, "client closed the connection; generation cancelled")
        else:
            self.log_line(method, path, started, f"{status} {reply.note()}".strip())

    def send_whole(self, reply: Reply, head: bool) -> int:
        payload = reply.text.encode() if reply.text is not None else go_json(reply.body)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not head:
            self.wfile.write(payload)
        return reply.status

    def send_stream(self, reply: Reply) -> int:
        """NDJSON, one chunk per line. The status is sent with the first
        line, so that an error before any content is an HTTP error, and one
        after it an {"error"} line, as Ollama's streamResponse does."""
        assert reply.stream is not None
        stream = reply.stream
        started = False
        try:
            for item in stream:
                line = go_json(item) + b"\n"
                if not started:
                    self.send_response(200)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    started = True
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
        except RequestError as e:
            if not started:
                stream.close()
                return self.send_whole(Reply(status=e.status, body={"error": e.text}), False)
            line = go_json({"error": e.text}) + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return 499
        except Exception as e:
            log(f"stream: {type(e).__name__}: {e}")
            if not started:
                stream.close()
                return self.send_whole(Reply(status=500, body={"error": str(e)}), False)
            line = go_json({"error": str(e)}) + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        finally:
            stream.close()
        if not started:  # a stream that ended before its first line
            self.send_response(200)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        return 200

    def log_line(self, method: str, path: str, started: int, outcome: str) -> None:
        ms = (time.monotonic_ns() - started) // 1_000_000
        log(f"{method} {path} -> {outcome} ({ms} ms)")


def loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, family: int):
        self.address_family = family
        super().__init__(address, handler)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a GGUF model through llama.cpp behind Ollama's HTTP API.")
    parser.add_argument("--model-file", required=True, help="the GGUF file (tests/llm/setup.sh assembles one)")
    parser.add_argument("--converter", help="llama.cpp's schema converter built by tests/llm/setup.sh "
                        "(default: converter/libschema-to-grammar.so beside the model's folder)")
    parser.add_argument("--name", default="gemma3:270m", help="the model's name on the API (default gemma3:270m)")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=11434, help="0 picks a free port (default 11434)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for llama.cpp (default 2)")
    parser.add_argument("--ctx", type=int, default=8192,
                        help="context length when a request sets no num_ctx (default 8192)")
    parser.add_argument("--batch", type=int, default=512,
                        help="tokens of a prompt evaluated per step (n_batch = n_ubatch; default 512)")
    parser.add_argument("--flash-attn", choices=("on", "off"), default="off",
                        help="llama.cpp's flash attention on the CPU (default off)")
    args = parser.parse_args()

    if not loopback(args.host):
        parser.error(f"--host {args.host}: not a loopback address; this test server serves this machine only")
    if not 0 <= args.port <= 65535:
        parser.error("--port: 0 to 65535")
    if args.threads < 1 or args.ctx < 16 or args.batch < 1:
        parser.error("--threads, --ctx and --batch must be positive (--ctx at least 16)")
    if not os.path.isfile(args.model_file):
        parser.error(f"--model-file {args.model_file}: no such file")

    converter_path = args.converter or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(args.model_file))), "converter", "libschema-to-grammar.so")
    if not os.path.isfile(converter_path):
        parser.error(f"--converter {converter_path}: no such file (tests/llm/setup.sh builds it)")

    converter = Converter(converter_path)
    runner = Runner(args.model_file, args.threads, args.ctx, args.batch, args.flash_attn == "on")
    family = socket.getaddrinfo(args.host, None)[0][0]
    handler = type("BoundHandler", (Handler,), {"api": Api(runner, converter, args.name, args.ctx)})
    server = Server((args.host, args.port), handler, family)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on http://{shown}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
