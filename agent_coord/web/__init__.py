"""The web dashboard (`agent-coord web`): the live pool in a browser, read-only unless actions are allowed.

``views`` builds the page's state document from the engine's read models (the terminal dashboard's
snapshot plus ``charts``), ``hub`` reads it once per store change for every open page, ``app`` serves
the page, its assets, the server-sent event stream and the actions behind ``security``'s checks, and
``serve`` binds and prints the address. The page itself is ``static/`` (HTML, vanilla JS, CSS).
"""
