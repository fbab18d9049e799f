"""Deployment: a fedloom server and real clients that train with it over gRPC.

The server runs the algorithm's server side with the same ``LearningProcess`` that
simulation runs, on a :class:`DeploymentRuntime` that sends each round's client
work, by name, to connected devices and folds their updates into the aggregate as
they stream in. Devices connect out, pull tasks, and run only client work
registered in their own installation.

Server (``fedloom server CONFIG.toml``)::

    from fedloom.deploy import load_server_config, serve
    experiment, settings = load_server_config("examples/deploy/digits_server.toml")
    serve(experiment, settings, out_dir="runs/deploy")

Client (``fedloom client``), with one's own data and model::

    from fedloom.deploy import DeviceClient
    DeviceClient("localhost:8765", token=token, examples=examples, model=model,
                 root_certificates=ca_pem).run()
"""

from ._auth import TokenBook as TokenBook
from ._auth import hash_token as hash_token
from ._auth import write_client_tokens as write_client_tokens
from ._auth import write_tokens as write_tokens
from ._certs import Certificates as Certificates
from ._certs import make_certificates as make_certificates
from ._client import ClientRefused as ClientRefused
from ._client import DeviceClient as DeviceClient
from ._config import DeployConfig as DeployConfig
from ._config import load_server_config as load_server_config
from ._registry import client_work as client_work
from ._registry import register_client_work as register_client_work
from ._registry import registered_client_works as registered_client_works
from ._registry import task_model as task_model
from ._round import RoundFailed as RoundFailed
from ._round import TaskSpec as TaskSpec
from ._runtime import DeploymentRuntime as DeploymentRuntime
from ._server import serve as serve
from ._server import task_spec as task_spec
from ._status import print_status as print_status
from ._status import read_status as read_status

__all__ = [
    "Certificates",
    "ClientRefused",
    "DeployConfig",
    "DeploymentRuntime",
    "DeviceClient",
    "RoundFailed",
    "TaskSpec",
    "TokenBook",
    "client_work",
    "hash_token",
    "load_server_config",
    "make_certificates",
    "print_status",
    "read_status",
    "register_client_work",
    "registered_client_works",
    "task_model",
    "serve",
    "task_spec",
    "write_client_tokens",
    "write_tokens",
]
