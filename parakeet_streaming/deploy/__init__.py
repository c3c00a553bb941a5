"""Running the server inside other hosts: an ASGI app (asgi.py) and a Ray Serve application
(ray_serve.py, needs `ray[serve]`)."""
