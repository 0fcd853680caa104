import os


def handler(event, context):
    print(f"event for {context.function_name}: {event}")
    return {
        "hello": (event or {}).get("name", "world"),
        "request_id": context.aws_request_id,
        "runtime_api": os.environ["AWS_LAMBDA_RUNTIME_API"],
        "remaining_ms": context.get_remaining_time_in_millis(),
    }
