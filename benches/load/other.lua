-- Pass-through: GET /other, a path the proxy only forwards.
wrk.method = "GET"
wrk.path = "/other"
