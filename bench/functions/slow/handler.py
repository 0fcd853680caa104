import time


def handler(event, context):
    # holds the instance for 100 ms, so 100 concurrent requests need many instances
    time.sleep(0.1)
    return {"message": "slow"}
