-- wrk script: a fixed rotation of requests of mixed sizes against tests/adversarial/mixed_app.py,
-- for the memory-flatness goal (bench/adversarial.py). Each thread walks the rotation from its
-- own offset. Sizes: empty to 1 MiB responses, 1 KiB to 256 KiB request bodies (Content-Length
-- and chunked), a 4 KiB head with 40 fields. (No HEAD: wrk would wait for its body.)
local reqs = {}
local function chunked(n, piece)
  local parts = {}
  while n > 0 do
    local k = math.min(n, piece)
    parts[#parts + 1] = string.format("%x\r\n%s\r\n", k, string.rep("c", k))
    n = n - k
  end
  parts[#parts + 1] = "0\r\n\r\n"
  return table.concat(parts)
end
-- Built in init(): every request carries its own Host (wrk.format adds none of its own to a
-- headers table we pass).
local function h(extra)
  local t = {Host = "bench"}
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

local function build()
  local many = {}
  for i = 1, 40 do many["X-Field-" .. i] = string.rep("h", 90) end

  reqs[#reqs + 1] = wrk.format("GET", "/", h())
  reqs[#reqs + 1] = wrk.format("GET", "/bytes?n=100", h())
  reqs[#reqs + 1] = wrk.format("GET", "/bytes?n=16384", h())
  reqs[#reqs + 1] = wrk.format("GET", "/bytes?n=262144", h())
  reqs[#reqs + 1] = wrk.format("GET", "/stream?n=1048576", h())
  reqs[#reqs + 1] = wrk.format("GET", "/stream?n=1000", h())
  reqs[#reqs + 1] = wrk.format("GET", "/?many", h(many))
  reqs[#reqs + 1] = wrk.format("POST", "/echo", h(), string.rep("p", 1024))
  reqs[#reqs + 1] = wrk.format("POST", "/echo", h(), string.rep("p", 65536))
  reqs[#reqs + 1] = wrk.format("POST", "/echo", h(), string.rep("p", 262144))
  -- wrk.format would add a Content-Length: chunked requests are written out by hand.
  local te = "POST /echo HTTP/1.1\r\nHost: bench\r\nTransfer-Encoding: chunked\r\n\r\n"
  reqs[#reqs + 1] = te .. chunked(70000, 4096)
  reqs[#reqs + 1] = te .. chunked(300, 7)
  reqs[#reqs + 1] = wrk.format("GET", "/%E2%9C%93/path?q=" .. string.rep("a", 2000), h())
end

local counter = 0
local n_threads = 0
function setup(thread)
  thread:set("offset", n_threads)
  n_threads = n_threads + 1
end

function init(args)
  build()
  counter = (offset or 0) * 5
end

function request()
  counter = counter + 1
  return reqs[(counter % #reqs) + 1]
end
