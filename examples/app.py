from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from distreload import DistReload

app = FastAPI()


@app.get("/", response_class=HTMLResponse)
def index() -> str:
    return "<html><body><h1>Hello from every worker</h1></body></html>"


app = DistReload(app)  # off unless DISTRELOAD_ENABLED=1
