"""The service's docs page (`/`) and OpenAPI spec (`/docs.json`): BentoML's Swagger UI and spec
with visionops' own title, description and model version, `GET /metadata` listed, the error
answers the gate really gives, and nothing fetched from outside the server. (BentoML's own page
loads Google Tag Manager and its spec's description is BentoML's README with badges from five
outside hosts: broken offline, and not about this service.)"""

from __future__ import annotations

import copy
import html
from typing import Any

ERROR_SCHEMA = {"type": "object", "title": "Error", "required": ["error"],
                "properties": {"error": {"type": "string", "description": "what is wrong and what to do"}}}
_ERRORS = {400: "Bad request: the upload, its field or its x-request-id", 401: "Missing or wrong API key",
           405: "Wrong method", 408: "The request body did not arrive in time",
           413: "Request body over the limit", 415: "Not multipart/form-data",
           503: "Overloaded, or the prediction log cannot be written: retry with backoff"}

# BentoML's Swagger UI, from the files BentoML serves under /static_content, minus the tracker
# and the GitHub corner.
_PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>{title}</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css" />
    <link rel="stylesheet" type="text/css" href="./static_content/index.css" />
    <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png" sizes="32x32" />
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-initializer.js" charset="UTF-8"></script>
  </body>
</html>
"""


def title(meta: dict[str, Any]) -> str:
    return f"visionops: {meta['model_name']} version {meta['model_version']}"


def description(meta: dict[str, Any], api_key: bool) -> str:
    spec = meta["input"]
    size = "×".join(str(v) for v in spec["size"])
    labels = meta["labels"]
    shown = ", ".join(labels[:20]) + (f", … ({len(labels)} labels)" if len(labels) > 20 else "")
    return "\n".join([
        (f"Image classification by the registered model **{meta['model_name']}**, version "
         f"**{meta['model_version']}** ({meta['serving_format']} on {meta['device']}; input {size}, "
         f"{spec['channels']} channels; labels: {shown})."),
        "",
        "- `POST /classify`: one image in the multipart field `image` → label, score, top-k, model version.",
        "- `POST /classify_batch`: several images in the repeated field `images` → one prediction each, in order.",
        "- `POST /embed`: one image in `image` → the embedding the drift monitor watches.",
        "- `GET /metadata`: the model's name, version, labels, input spec, git commit and data version.",
        "",
        ("Every prediction is appended to the production log. An `x-request-id` header (1 to 128 of "
         "A-Z a-z 0-9 . _ -) names the request in the log and comes back in the answer; without one the "
         "server makes one. Errors are JSON objects `{\"error\": \"...\"}`.")
        + (" Send `Authorization: Bearer <key>`: this server has an API key." if api_key else ""),
    ])


def spec(bentoml_spec: dict[str, Any], meta: dict[str, Any], api_key: bool, uploads: tuple[str, ...]) -> dict[str, Any]:
    """BentoML's spec (`Service.openapi_spec.asdict()`) made to describe this service."""
    out = copy.deepcopy(bentoml_spec)
    out["info"] = {"title": title(meta), "version": str(meta["model_version"]),
                   "description": description(meta, api_key)}
    out.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for route in uploads:
        post = out["paths"][route]["post"]
        ok = post["responses"].get(200) or post["responses"]["200"]  # keys are ints until serialised
        post["responses"] = {"200": ok,
                             **{str(code): {"description": text, **error} for code, text in _ERRORS.items()}}
    meta_post = out["paths"]["/metadata"]["post"]
    out["paths"]["/metadata"]["get"] = {
        **{k: v for k, v in meta_post.items() if k != "requestBody"},
        "description": "Registered model name and version, labels, input spec, embedding, git commit, data version, "
                       "metrics (POST answers the same, for BentoML's clients).",
        "operationId": f"{meta_post['operationId']}_get"}
    return out


def page(meta: dict[str, Any]) -> str:
    return _PAGE.format(title=html.escape(title(meta)))
