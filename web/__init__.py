"""The intake service and REST API: HTTP in, HTTP out, over the core's database.

It never loads the model: workers classify, the web only writes jobs and reads results.
Build the app with ``web.app.create_app``; nothing here runs at import time.
"""
