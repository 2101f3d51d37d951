"""A Kubernetes API emulator: the subset of kube-apiserver that canaryd and the sandbox use, over HTTP.

See DESIGN §7. Clients use the ordinary `kubernetes` package with the kubeconfig `write_kubeconfig`
writes; `python -m canaryd.sandbox.kubeapi --crd FILE...` serves one from the command line.
"""

from canaryd.sandbox.kubeapi.app import RequestHook
from canaryd.sandbox.kubeapi.emulator import KubeApiEmulator, load_crds
from canaryd.sandbox.kubeapi.errors import ApiError, status_body
from canaryd.sandbox.kubeapi.requestinfo import ApiCall, RequestInfo

__all__ = ["ApiCall", "ApiError", "KubeApiEmulator", "RequestHook", "RequestInfo", "load_crds", "status_body"]
