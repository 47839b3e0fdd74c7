-- benches/tokens.lua: a wrk script that sends per-request headers, cycling through the lines of
-- the files named by the environment variables
--   TOLLGATE_BENCH_TOKENS   one bearer token a line: `Authorization: Bearer <line>`
--   TOLLGATE_BENCH_COOKIES  one full `Cookie` header value a line: `Cookie: <line>`
-- Either or both may be set; with both, request i carries token line i and cookie line i (the
-- files must have the same number of lines).
--
-- Each wrk thread builds all its requests once, in init(), and then goes through every line in
-- turn, starting at its own offset (so that two threads do not send the same line at the same
-- moment). Building the requests up front keeps the per-request Lua work to a table lookup.
-- TOLLGATE_BENCH_THREAD_BASE (default 0) is added to the thread numbers, so that two wrk
-- processes with -t1 and bases 0 and 1 start where the two threads of one -t2 wrk would.
--
--   TOLLGATE_BENCH_TOKENS=/tmp/tokens.txt wrk -t2 -c64 -d10s -s benches/tokens.lua URL

local threads = tonumber(os.getenv("TOLLGATE_BENCH_THREAD_BASE") or "0") or 0

function setup(thread)
  thread:set("thread_index", threads)
  threads = threads + 1
end

-- The non-empty lines of the file named by environment variable `name`, or nil if it is unset.
local function lines_of(name)
  local path = os.getenv(name)
  if path == nil or path == "" then
    return nil
  end
  local file = assert(io.open(path, "r"))
  local lines = {}
  for line in file:lines() do
    if #line > 0 then
      lines[#lines + 1] = line
    end
  end
  file:close()
  if #lines == 0 then
    error("no lines in " .. path .. " (" .. name .. ")")
  end
  return lines
end

function init(args)
  local tokens = lines_of("TOLLGATE_BENCH_TOKENS")
  local cookies = lines_of("TOLLGATE_BENCH_COOKIES")
  if tokens == nil and cookies == nil then
    error("neither TOLLGATE_BENCH_TOKENS nor TOLLGATE_BENCH_COOKIES is set")
  end
  if tokens ~= nil and cookies ~= nil and #tokens ~= #cookies then
    error(#tokens .. " tokens but " .. #cookies .. " cookie lines")
  end
  count = tokens and #tokens or #cookies
  requests = {}
  for i = 1, count do
    local headers = {}
    if tokens ~= nil then
      headers["Authorization"] = "Bearer " .. tokens[i]
    end
    if cookies ~= nil then
      headers["Cookie"] = cookies[i]
    end
    requests[i] = wrk.format(nil, nil, headers)
  end
  -- Spread the threads' starting points over the list (golden-ratio stride).
  position = math.floor((thread_index or 0) * count * 0.618) % count
end

function request()
  position = position + 1
  if position > count then
    position = 1
  end
  return requests[position]
end
