-- wrk: POST the benchmark's JSON chat request, with the headers each arm needs (from the environment).
wrk.method = "POST"
wrk.body = '{"model":"gpt-4.1-mini","messages":[{"role":"user","content":"Hello"}],"max_tokens":50}'
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["Origin"] = os.getenv("BENCH_ORIGIN")
end
