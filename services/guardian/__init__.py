"""Guardian: judges generated answers (and prompts sent to its check API) off the serving path.

It reads `<prefix>.results`, runs cheap detectors (PII with checksum validation, prompt-injection
phrases) and publishes a GuardianVerdict per result to `<prefix>.verdicts`; `POST /v1/guard/check`
answers the same judgement synchronously.
"""
