"""The Hugging Face Hub endpoint (issue 20, finding 15): one that accepts connections and
never answers, one that refuses them, one that is not a URL. Every call must end within its
timeout with the Hub's own error. Section of the convert engineer: add cases here (the
window's Hub dialog and a download command when there is one)."""

from __future__ import annotations

import socket

from faults.harness import Campaign, group

CALLS = {
    "search": "from apex_gui.core.hub.search import search_repos\nsearch_repos('qwen gguf')",
    "list files": "from apex_gui.core.hub.download import list_gguf_files\n"
                  "list_gguf_files('someone/Some-GGUF')",
    "download": "from apex_gui.core.hub.download import RemoteFile, download_gguf\n"
                "download_gguf('someone/Some-GGUF', RemoteFile('a.gguf', 10))",
}
#: Each call prints the Hub's own error on one line and exits 2, as a command would.
WRAP = """import sys
from apex_gui.core.hub.download import HubError
try:
{body}
except HubError as error:
    print(error, file=sys.stderr)
    sys.exit(2)
"""


def _snippet(body: str) -> str:
    return WRAP.format(body="\n".join("    " + line for line in body.splitlines()))


@group("hub endpoint")
def hub_endpoints(c: Campaign) -> None:
    folder = c.folder()
    with socket.socket() as silent, socket.socket() as closed:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        endpoints = {"never answers": f"http://127.0.0.1:{silent.getsockname()[1]}",
                     "refuses": f"http://127.0.0.1:{closed.getsockname()[1]}",
                     "is not a URL": "not a url"}
        for what, endpoint in endpoints.items():
            env = {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0",
                   "HF_HOME": str(c.work / "hf-home")}
            # A failed step, as any other the pipeline runs: exit code 1 and its reason.
            c.run(f"pipeline hf://... where the endpoint {what}",
                  ["pipeline", "hf://someone/Some-Model", "--profiles", "quality"], folder,
                  env=env, expect=1, deadline=120)
            for call, body in CALLS.items():
                c.run_python(f"Hub {call} where the endpoint {what}", _snippet(body), folder,
                             env={"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0",
                                  "HF_HOME": str(c.work / "hf-home")},
                             expect=None, deadline=120)
