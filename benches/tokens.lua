-- benches/tokens.lua: a wrk script that sends one bearer token per request, cycling through the
-- tokens of the file named by the environment variable TOLLGATE_BENCH_TOKENS (one token a line).
--
-- Each wrk thread builds all its requests once, in init(), and then goes through every token in
-- turn, starting at its own offset (so that two threads do not send the same token at the same
-- moment). Building the requests up front keeps the per-request Lua work to a table lookup.
--
--   TOLLGATE_BENCH_TOKENS=/tmp/tokens.txt wrk -t2 -c64 -d10s -s benches/tokens.lua URL

local threads = 0

function setup(thread)
  thread:set("thread_index", threads)
  threads = threads + 1
end

function init(args)
  local path = os.getenv("TOLLGATE_BENCH_TOKENS")
  if path == nil or path == "" then
    error("TOLLGATE_BENCH_TOKENS is not set")
  end
  local file = assert(io.open(path, "r"))
  requests = {}
  for line in file:lines() do
    if #line > 0 then
      requests[#requests + 1] = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. line })
    end
  end
  file:close()
  count = #requests
  if count == 0 then
    error("no tokens in " .. path)
  end
  -- Spread the threads' starting points over the token list (golden-ratio stride).
  position = math.floor((thread_index or 0) * count * 0.618) % count
end

function request()
  position = position + 1
  if position > count then
    position = 1
  end
  return requests[position]
end
