-- wrk script of suite_http.sh: 16 requests for /plaintext sent at a time on each
-- connection (pipelined); responses are not inspected, so that wrk stays cheap.
init = function(args)
  local reqs = {}
  for i = 1, 16 do
    reqs[i] = wrk.format("GET", "/plaintext")
  end
  batch = table.concat(reqs)
end

request = function()
  return batch
end
