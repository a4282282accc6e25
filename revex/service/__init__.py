"""``revex serve``: the HTTP service (SandboxFusion's ``/run_code``, OpenRLHF's reward route,
function-style tests, health and metrics) over the same Python API."""

from revex.service.app import ServiceConfig, check_bind, create_app, serve

__all__ = ["ServiceConfig", "check_bind", "create_app", "serve"]
