"""The Lambda API's operation table and ASGI app, mounted in front of the rest of the platform."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from squall.lambda_api import aliases, functions
from squall.lambda_api.edge import Operation, routes
from squall.lambda_api.errors import HANDLERS
from squall.lambda_api.invoke import invoke, invoke_limit
from squall.platform import Platform
from squall.tenancy.model import Scope as S

PREFIX = "/2015-03-31/"
_FN = "/2015-03-31/functions/{FunctionName}"

OPERATIONS: list[Operation] = [
    Operation("InvokeFunction", "POST", f"{_FN}/invocations", S.INVOKE, invoke, invoke_limit),
    Operation("ListFunctions", "GET", "/2015-03-31/functions", S.READ, functions.list_functions),
    Operation("CreateFunction", "POST", "/2015-03-31/functions", S.DEPLOY,
              functions.create_function, functions.create_limit),
    Operation("GetFunction", "GET", _FN, S.READ, functions.get_function),
    Operation("DeleteFunction", "DELETE", _FN, S.DEPLOY, functions.delete_function),
    Operation("UpdateFunctionCode", "PUT", f"{_FN}/code", S.DEPLOY, functions.update_code,
              functions.create_limit),
    Operation("UpdateFunctionConfiguration", "PUT", f"{_FN}/configuration", S.DEPLOY,
              functions.update_configuration),
    Operation("PublishVersion", "POST", f"{_FN}/versions", S.DEPLOY, functions.publish_version),
    Operation("ListVersionsByFunction", "GET", f"{_FN}/versions", S.READ,
              functions.list_versions),
    Operation("CreateAlias", "POST", f"{_FN}/aliases", S.DEPLOY, aliases.create_alias),
    Operation("ListAliases", "GET", f"{_FN}/aliases", S.READ, aliases.list_aliases),
    Operation("GetAlias", "GET", f"{_FN}/aliases/{{Name}}", S.READ, aliases.get_alias),
    Operation("UpdateAlias", "PUT", f"{_FN}/aliases/{{Name}}", S.DEPLOY, aliases.update_alias),
    Operation("DeleteAlias", "DELETE", f"{_FN}/aliases/{{Name}}", S.DEPLOY,
              aliases.delete_alias),
]


def build_app(platform: Platform) -> Starlette:
    app = Starlette(routes=routes(OPERATIONS), exception_handlers=HANDLERS)
    app.state.platform = platform
    return app


class LambdaGateway:
    """Serves Lambda's paths (``/2015-03-31/...``); every other request passes on to ``app``."""

    def __init__(self, app: ASGIApp, platform: Platform) -> None:
        self.app = app
        self.lambda_app = build_app(platform)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await self.lambda_app(scope, receive, send)
        else:
            await self.app(scope, receive, send)
