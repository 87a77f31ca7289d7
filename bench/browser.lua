-- wrk script: browser-like requests whose heads never repeat (issue 10's realistic traffic).
-- Each request carries the 13 fields a current browser sends on a same-origin navigation
-- (~700-800 bytes of head), and on every request the path, the query, the session cookie
-- (one of 1,000 users), the Referer and a request id change: no two heads are alike, so no
-- cache keyed on the head can help. FORM = true (set before this file) makes every request a
-- form POST: a 2 KiB urlencoded body with a CSRF token, as a login or comment form sends.
local counter = 0
local seed = 0
local filler = string.rep("x", 1900)

function setup(thread)
  thread:set("seed", seed)
  seed = seed + 1
end

function init(args)
  counter = (seed or 0) * 1000003
end

local function hex(n, width)
  return string.format("%0" .. width .. "x", n % (16 ^ width))
end

function request()
  counter = counter + 1
  local n = counter
  local user = n % 1000
  local path = string.format("/shop/item/%d/reviews", n % 50000)
  local query = string.format("?id=%d&q=%s&page=%d", n, hex(n * 2654435761, 8), n % 7)
  local headers = {
    ["Host"] = "bench.example",
    ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    ["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    ["Accept-Language"] = "en-GB,en;q=0.9,de;q=0.7",
    ["Accept-Encoding"] = "gzip, deflate, br, zstd",
    ["Referer"] = string.format("http://bench.example/shop/item/%d/", (n * 7) % 50000),
    ["Cookie"] = string.format("sessionid=%s%s; csrftoken=%s; theme=dark; _ga=GA1.1.%d.%d",
                               hex(user * 40503, 16), hex(user * 9973, 16), hex(user * 31337, 32),
                               user * 7919, 1700000000 + user),
    ["Sec-Fetch-Dest"] = "document",
    ["Sec-Fetch-Mode"] = "navigate",
    ["Sec-Fetch-Site"] = "same-origin",
    ["Sec-Fetch-User"] = "?1",
    ["Upgrade-Insecure-Requests"] = "1",
    ["X-Request-Id"] = hex(n * 2246822519, 8) .. "-" .. hex(n, 12),
  }
  if FORM then
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    headers["Origin"] = "http://bench.example"
    local body = string.format("csrfmiddlewaretoken=%s&title=Review+%d&rating=%d&text=", hex(user * 31337, 32), n, n % 5)
    body = body .. string.sub(filler, 1, 2048 - #body)
    return wrk.format("POST", path, headers, body)
  end
  return wrk.format("GET", path .. query, headers)
end
