"""A small FastAPI shop: path and query parameters, a JSON body, cookies, a redirect, a 404,
and a Server-Sent Events stream."""

import asyncio

from fastapi import Cookie, FastAPI, HTTPException, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import BaseModel

app = FastAPI(title="shop")
ITEMS: dict[int, dict[str, object]] = {1: {"id": 1, "name": "kite", "price": 12.5}}


class Item(BaseModel):
    name: str
    price: float


@app.get("/items/{item_id}")
def get_item(item_id: int, request: Request, currency: str = "EUR") -> dict[str, object]:
    if item_id not in ITEMS:
        raise HTTPException(status_code=404, detail=f"no item {item_id}")
    return {**ITEMS[item_id], "currency": currency,
            "url": str(request.url_for("get_item", item_id=item_id)),
            "agent": request.headers.get("user-agent", "")}


@app.post("/items", status_code=201)
def add_item(item: Item, response: Response) -> dict[str, object]:
    item_id = max(ITEMS) + 1
    ITEMS[item_id] = {"id": item_id, **item.model_dump()}
    response.headers["location"] = f"items/{item_id}"
    return ITEMS[item_id]


@app.post("/login")
def login(response: Response, user: str = "ada") -> dict[str, str]:
    response.set_cookie("user", user, httponly=True)
    response.set_cookie("theme", "dark")
    return {"logged_in": user}


@app.get("/me")
def me(user: str | None = Cookie(default=None), theme: str | None = Cookie(default=None)
       ) -> dict[str, str | None]:
    return {"user": user, "theme": theme}


@app.get("/old-items/{item_id}")
def moved(item_id: int, request: Request) -> RedirectResponse:
    return RedirectResponse(request.url_for("get_item", item_id=item_id), status_code=308)


@app.get("/ticks")
async def ticks(n: int = 3, every: float = 0.05) -> StreamingResponse:
    async def events():
        for i in range(n):
            yield f"event: tick\ndata: {i}\n\n"
            await asyncio.sleep(every)

    return StreamingResponse(events(), media_type="text/event-stream")
