"""The smallest function: answers every HTTP request with a greeting."""


def handler(event, context):
    name = (event.get("queryStringParameters") or {}).get("name", "world")
    return {"message": f"hello, {name}", "request_id": context.aws_request_id}
