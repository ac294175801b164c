"""gunicorn plumbing, kept apart from the Flask app (`app/`).

gunicorn's master imports these modules before it forks, and each worker
monkeypatches for gevent before it imports the app. So nothing here imports
`app`: the app (Flask, Prisma, httpx) is only ever imported after the patch.

- `worker`: the worker class (gevent greenlets that buffer each request first);
- `logs`: one JSON line per log record, for the server's lines and the app's alike.
"""
