"""The batch service's database: schema, engines and migrations, and the queries on them.

Import the submodules (`schema`, `engine`, `queries`, `records`); nothing here connects.
"""
