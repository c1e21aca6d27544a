-- The full flow: an authorization request, then a token request that
-- redeems the code from its Location with the right verifier. Each thread
-- queues the codes it receives; a request redeems one when there is one,
-- and starts a new authorization otherwise, so the mix settles near 1:1.
-- A 302 without a code or with the wrong state, and any token answer but
-- 200, count as bad: the benchmark must measure flows that succeed.

local verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
local redirect = "https%3A%2F%2Fclient.example%2Fcb"
local form = { ["Content-Type"] = "application/x-www-form-urlencoded" }
local authorize

-- Formatted here, not at load: wrk knows the Host only from init on.
function init(args)
   authorize = wrk.format("GET", "/authorize?response_type=code&client_id=bench"
      .. "&redirect_uri=" .. redirect .. "&state=s1"
      .. "&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256")
end

local codes = {}
local first, last = 1, 0
authorizes = 0
tokens = 0

function request()
   if last >= first then
      local code = codes[first]
      codes[first] = nil
      first = first + 1
      return wrk.format("POST", "/token", form,
         "grant_type=authorization_code&code=" .. code .. "&code_verifier=" .. verifier
         .. "&client_id=bench&redirect_uri=" .. redirect)
   end
   return authorize
end

function response(status, headers, body)
   if status == 302 then
      authorizes = authorizes + 1
      local location = headers["location"] or headers["Location"] or ""
      local code = location:match("[?&]code=([^&#]+)")
      local state = location:match("[?&]state=([^&#]+)")
      if code and state == "s1" then
         last = last + 1
         codes[last] = code
      else
         bad = bad + 1
      end
   elseif status == 200 then
      tokens = tokens + 1
   else
      bad = bad + 1
   end
end
