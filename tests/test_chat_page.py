"""The chat page (`GET /`) in a real headless browser: Debian's chromium driven through chromium-driver by
selenium, against a real `llmgpu serve` server on 127.0.0.1 (a free port) with the fake model. A person's
path: type a message, press Enter, watch the answer stream in, read the speed line.

`bash install.sh --test` installs chromium, chromium-driver (apt) and selenium (the test extra). Where they
are missing the test fails under CI (CI=true) and is skipped elsewhere, saying what to install.
The screenshot goes to this test's pytest tmp dir: /tmp/pytest-of-$USER/pytest-N/test_chat_page_streams_an_an0/
chat.png (pytest keeps the last 3 runs; the path is also printed and recorded in the JUnit properties)."""
import os
import shutil
import time

import pytest

from llmgpu import LLM
from llmgpu.serve import Server, ServerThread
from tests.test_serve import WAIT, GatedModel

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ANSWER = "Hello world! How are you today?"


def _need(what: str):
    msg = f"{what}; `bash install.sh --test` installs it (apt: chromium chromium-driver; pip: selenium)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture
def browser(tmp_path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need("selenium is not installed")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            _need(f"{path} is missing")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--window-size=1000,800", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    # the driver's path given: selenium runs it and never looks for (or downloads) one of its own
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(predicate, what: str, timeout: float = WAIT):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (v := predicate()):
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_chat_page_streams_an_answer(browser, tmp_path, record_property):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    m = GatedModel(max_seq=1024)
    m.say(ANSWER)
    tok = m.ckpt.tokenizer
    with ServerThread(Server(LLM(m))) as st:
        try:
            browser.get(st.url + "/")
            assert browser.title == "llmgpu chat"
            temperature, max_tokens = browser.find_element(By.ID, "temperature"), browser.find_element(By.ID,
                                                                                                       "max_tokens")
            temperature.clear()
            temperature.send_keys("0")
            box = browser.find_element(By.ID, "input")
            box.send_keys("Hi there", Keys.ENTER)

            def answer():
                return browser.find_element(By.CSS_SELECTOR, "#log .msg.assistant").text

            # the model is held after its first 3 tokens (prefill + 2 decodes): those must be on screen already
            m.permits.release(2)
            first3 = tok.decode(m.script[:3])
            _wait(lambda: answer() == first3, f"the first tokens {first3!r} to appear while the model is held")
            assert browser.find_element(By.ID, "send").get_attribute("disabled")  # busy until the answer ends
            assert browser.find_element(By.CSS_SELECTOR, "#log .msg.user").text == "Hi there"
            m.open()
            _wait(lambda: browser.find_element(By.ID, "speed").text, "the speed line")
            assert answer() == ANSWER
            n = len(m.script)  # the answer's tokens and the end-of-sequence token
            speed = browser.find_element(By.ID, "speed").text
            assert speed.startswith(f"{n} tokens, ") and "tokens/s" in speed and "first token after" in speed
            assert not browser.find_element(By.ID, "send").get_attribute("disabled")

            # the controls reach the request: max tokens 2 cuts the next answer to its first 2 tokens, and the
            # conversation so far is sent with it (the prompt grows by the first turn)
            max_tokens.clear()
            max_tokens.send_keys("2")
            box.send_keys("Again", Keys.ENTER)
            bubbles = lambda: browser.find_elements(By.CSS_SELECTOR, "#log .msg.assistant")  # noqa: E731
            _wait(lambda: len(bubbles()) == 2 and bubbles()[1].text == tok.decode(m.script[:2]) and
                  browser.find_element(By.ID, "speed").text.startswith("2 tokens"), "the second, 2-token answer")
            assert st.server.engine.served == 2
            seen = tok.decode(m.ids, skip_special_tokens=False)  # what the model was given the second time
            assert seen.index("Hi there") < seen.index(ANSWER) < seen.index("Again")
            assert browser.find_elements(By.CSS_SELECTOR, "#log .msg.error") == []
        finally:
            shot = tmp_path / "chat.png"
            browser.save_screenshot(str(shot))
            record_property("screenshot", str(shot))
            print(f"screenshot: {shot}")
    assert shot.stat().st_size > 1000
