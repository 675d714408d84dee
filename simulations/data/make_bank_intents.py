"""Writes bank-intents.csv (and a disjoint central evaluation file): synthetic customer messages
to a bank, one fine-grained intent each (72 intents, in the spirit of Banking77; nothing is
downloaded and no real customer data is used).

A stand-in for a bank's own export (columns named by the bank, not by fedtune): ``message``,
``intent`` and ``branch`` (the branch that received it: a natural group; each branch sees mostly
its own kind of customer, so the intent mixes differ a lot between branches). Some intents are
deliberately close (card_arrival vs card_delivery_estimate, pending_card_payment vs
pending_transfer, top_up_failed vs top_up_reverted, ...), but every template belongs to exactly
one intent. Deterministic. Re-create with:
    python simulations/data/make_bank_intents.py
Print the comma-separated label list (for ``[data] labels`` in simulations/bank-intents.toml):
    python simulations/data/make_bank_intents.py --labels
"""

import random
import sys
from pathlib import Path

from unique_csv import write_unique

# intent -> message templates (slots: {amt} {city} {country} {merchant} {past} {future} {since} {time} {cur} {n}).
INTENTS = {
    # --- cards: delivery, activation, everyday problems
    "card_arrival": [
        "I ordered a new card {past} and it still has not arrived",
        "my card never turned up, it was supposed to be posted to {city}",
        "it has been {n} weeks and there is still no sign of my new card",
        "the tracking says my card was delivered but there is nothing in my letterbox",
        "where is the card you sent me {past}, it is not here yet",
    ],
    "card_delivery_estimate": [
        "how many days does card delivery usually take",
        "if I order a card today, when should I expect it in {city}",
        "do you deliver cards to {country} and how long does that take",
        "can I pay for express delivery so a new card reaches me {future}",
        "what is the normal delivery time for a replacement card",
    ],
    "activate_my_card": [
        "my new card arrived {past}, how do I activate it",
        "what do I need to do to activate the card I just received",
        "the app will not let me activate my card, the button is greyed out",
        "is there an activation code for the card that came in the post",
        "I want to start using my new card at {merchant}, how do I switch it on",
    ],
    "card_linking": [
        "how do I link the card I already have to my account in the app",
        "I found the card I thought I had lost, can I link it to the app again",
        "the app does not show my card, how do I add it to my profile",
        "can I link a second card to the same account online",
        "linking my card to the app fails with an error {time}",
    ],
    "card_expiring": [
        "my card expires {future}, will you send me a new one automatically",
        "the expiry date on my card is next month, do I need to order a replacement",
        "what happens to my direct debits when my card expires",
        "my card runs out {future}, how do I renew it",
        "I will be in {country} when my card expires, can the renewal be sent there",
    ],
    "card_not_working": [
        "the chip on my card is damaged and no terminal can read it",
        "my card is cracked down the middle and the machines in {city} reject it",
        "my card got bent in my wallet and now it does not work in any reader",
        "the magnetic strip on my card seems dead since {since}",
        "my physical card stopped being readable {past}, can you replace the faulty card",
    ],
    "contactless_not_working": [
        "contactless does not work on my card any more, I have to use the PIN every time",
        "I tap my card at {merchant} and nothing happens",
        "why has contactless stopped working on my card since {since}",
        "tap to pay fails on my card but chip and PIN works fine",
        "the contactless symbol is on my card but tapping it at the bus gate in {city} never works",
    ],
    "lost_or_stolen_card": [
        "I lost my card in {city} {past}",
        "my wallet was stolen with my card in it, please block it",
        "I cannot find my card anywhere since {since}",
        "someone stole my bag at {merchant} and my card was inside",
        "I think I left my card in a taxi in {city}, can you freeze it",
    ],
    "compromised_card": [
        "I typed my card details into a website that turned out to be fake",
        "{merchant} says my card number was leaked in their data breach",
        "I think someone has copied my card details, I want a new number",
        "a stranger on the phone read out my full card number to me {past}",
        "my card details were posted online, is my card still safe to use",
    ],
    "card_swallowed": [
        "the cash machine in {city} kept my card",
        "the ATM swallowed my card {past} and did not give it back",
        "my card got stuck inside the machine at the {city} station {time}",
        "a cash machine retained my card after I entered my PIN, how do I get it back",
        "the ATM outside {merchant} ate my card",
    ],
    "pin_blocked": [
        "my PIN is blocked after I got it wrong three times",
        "I typed the wrong PIN too many times and now it is blocked",
        "how do I unblock my PIN",
        "the machine in {city} says my PIN is locked",
        "my PIN got blocked at {merchant} {time}, can you reset the counter",
    ],
    "change_pin": [
        "how do I change my PIN",
        "I would like to set a new PIN that is easier to remember",
        "can I change my card PIN in the app or do I need a cash machine",
        "I want a different PIN for my card before I travel {future}",
        "is it possible to choose my own PIN instead of the one you sent",
    ],
    "getting_spare_card": [
        "can I get a second card on my account for my partner",
        "I would like an additional card for an employee, with a limit of {amt}",
        "how do I order a spare card for my teenager",
        "is there a fee for an extra card on the same account",
        "my husband needs his own card on my account {future}, can he have one",
    ],
    "get_physical_card": [
        "I only have the virtual card, how do I order a plastic one",
        "can I get a physical card as well as the one in the app",
        "how much does it cost to have a physical card posted to {city}",
        "I want a real card I can hold, not just the card in my phone",
        "do I need a physical card to withdraw cash in {country}",
    ],
    "get_disposable_virtual_card": [
        "how do I create a disposable virtual card for online shopping",
        "can I get a single-use card number to pay {merchant}",
        "where in the app do I generate a one-time virtual card",
        "is there a limit on how many disposable cards I can make per day",
        "I want a throwaway card number for a free trial, how do I get one",
    ],
    "virtual_card_not_working": [
        "my virtual card is rejected on the {merchant} website",
        "the virtual card in my app does not work for online payments",
        "why does my virtual card keep failing at checkout {time}",
        "I created a virtual card {past} but every shop refuses it",
        "my virtual card number shows as invalid when I pay for {amt} of tickets",
    ],
    "card_spending_limit": [
        "how do I set a daily spending limit on my card",
        "can I cap my card spending at {amt} a week",
        "I want to lower the spending limit on my card so I do not overspend",
        "where do I change the monthly spending limit for card payments",
        "can I set a separate spending limit for online card purchases",
    ],
    "apple_pay_or_google_pay": [
        "can I add my card to Apple Pay",
        "Google Pay will not accept my card, what am I doing wrong",
        "how do I set up my phone so I can pay with Apple Pay at {merchant}",
        "does your card work with Google Pay on my watch",
        "my card was removed from Apple Pay {past}, how do I add it back",
    ],
    "card_acceptance": [
        "will {merchant} take my card",
        "why do some shops in {city} not accept cards like mine",
        "can I pay for fuel at a petrol station with your card",
        "is your card accepted for hotel deposits and car rentals",
        "which kinds of merchants do not accept your card",
    ],
    "supported_cards_and_currencies": [
        "is your card a Visa or a Mastercard",
        "which currencies can I hold in my account",
        "can I keep a balance in {cur}",
        "do you offer a credit card or only debit cards",
        "how many currencies does your account support",
    ],
    # --- card payments
    "declined_card_payment": [
        "my card was declined at {merchant} when I tried to pay {amt}",
        "why was my card payment of {amt} refused at the till {time}",
        "I have enough money but my card payment keeps getting declined in {city}",
        "{merchant} says the bank declined my card, what is wrong",
        "my card payment was rejected {past} even though my balance is fine",
    ],
    "pending_card_payment": [
        "my card payment at {merchant} has been pending since {since}",
        "why is my card payment of {amt} still showing as pending",
        "how long does a card payment stay pending before it goes through",
        "a card payment in {city} is stuck on pending, will it complete",
        "I paid {merchant} by card {past} and it is still pending",
    ],
    "card_payment_fee_charged": [
        "I was charged a fee for paying by card at {merchant}",
        "why is there an extra fee on my card payment of {amt}",
        "do you charge a fee for card payments in {cur}",
        "I paid by card in {city} and you added a fee, why",
        "there is a card payment fee on my statement for a purchase {past}",
    ],
    "card_payment_wrong_exchange_rate": [
        "the exchange rate on my card payment in {city} was wrong",
        "I paid {amt} by card at {merchant} abroad and the rate you used is worse than the official one",
        "why was my card purchase in {cur} converted at such a bad rate",
        "the rate applied to my card payment in {country} does not match the rate in your app",
        "you charged me too much for a card payment abroad {past} because of the exchange rate",
    ],
    "card_payment_not_recognised": [
        "there is a card payment from {merchant} that I do not recognise",
        "I see a card purchase of {amt} I never made",
        "a payment in {city} appeared on my card but I was not there",
        "my card was used at {merchant} {past} and it was not me",
        "I do not know what this card payment of {amt} is, I did not authorise it",
    ],
    "reverted_card_payment": [
        "my payment at {merchant} was reversed and the money came back, why",
        "a card payment of {amt} was taken and then put back into my account",
        "why did my card payment get reverted {past}",
        "the shop in {city} says my card payment was cancelled but I already had the goods",
        "my card payment disappeared from my statement and the money was returned",
    ],
    "extra_charge_on_statement": [
        "I was charged twice at {merchant} for the same purchase",
        "my statement shows {amt} but the receipt says less",
        "there is a duplicate charge for my lunch in {city} {past}",
        "why was I charged more than the price at the till",
        "one purchase at {merchant} shows up three times on my statement",
    ],
    "direct_debit_payment_not_recognised": [
        "there is a direct debit on my account I do not recognise",
        "who set up a direct debit of {amt} from my account",
        "a direct debit to {merchant} was taken {past} and I never signed up",
        "I want to dispute a direct debit I did not authorise",
        "I see a new direct debit every month that I know nothing about",
    ],
    "request_refund": [
        "how do I get a refund for something I bought at {merchant}",
        "I returned an item worth {amt}, how do I ask for my money back",
        "can you help me get a refund from a shop in {city} that will not answer",
        "I want to request a refund for a cancelled order",
        "the seller agreed to refund me {past}, do I need to do anything",
    ],
    "refund_not_showing_up": [
        "{merchant} said they refunded me {past} but I do not see it",
        "my refund of {amt} has not reached my account yet",
        "how long until a refund from a shop shows up in my balance",
        "the refund for my cancelled flight to {city} is still missing",
        "I have the refund confirmation email but the money is not in my account",
    ],
    # --- cash
    "cash_withdrawal_charge": [
        "why was I charged a fee for withdrawing cash",
        "I took out {amt} at a cash machine in {city} and you charged me for it",
        "how much do you charge for ATM withdrawals in {country}",
        "there is a fee on my statement for a cash withdrawal {past}",
        "I thought cash withdrawals were free, why did I pay a charge",
    ],
    "declined_cash_withdrawal": [
        "the cash machine refused to give me money {time}",
        "my cash withdrawal of {amt} was declined in {city}",
        "why can I not withdraw cash with my card",
        "the ATM says transaction declined when I try to take out money",
        "I tried to withdraw cash {past} and got declined even though I have funds",
    ],
    "pending_cash_withdrawal": [
        "my cash withdrawal is still showing as pending",
        "I took out {amt} {past} and it is pending on my account",
        "how long does an ATM withdrawal stay pending",
        "a cash withdrawal in {city} has been pending for {n} days",
        "why is my cash withdrawal pending when I already have the money",
    ],
    "cash_withdrawal_not_recognised": [
        "there is an ATM withdrawal of {amt} I did not make",
        "someone took out cash with my card in {city} {past}",
        "I see a cash withdrawal on my account that was not me",
        "a cash machine withdrawal {time} appears on my statement, I was at home",
        "I never withdrew {amt} in cash, who did",
    ],
    "wrong_amount_of_cash_received": [
        "the cash machine gave me less money than I asked for",
        "I asked for {amt} but the ATM only gave me part of it",
        "the machine in {city} charged my account but no cash came out",
        "I was debited for a withdrawal of {amt} and received the wrong amount",
        "the ATM at {merchant} dispensed fewer notes than it said",
    ],
    "wrong_exchange_rate_for_cash_withdrawal": [
        "the exchange rate on my cash withdrawal in {city} was terrible",
        "I took out cash in {country} and the conversion rate was wrong",
        "why was my ATM withdrawal in {cur} converted at a bad rate",
        "the rate you used for my cash withdrawal abroad {past} is not the market rate",
        "I withdrew {amt} in {cur} and the rate on my statement is too high",
    ],
    "atm_support": [
        "which cash machines can I use with your card",
        "where can I find an ATM that takes your card in {city}",
        "can I use any cash machine in {country} with my card",
        "do you have your own cash machines or do I use other banks",
        "is there a list of partner ATMs near {merchant}",
    ],
    "deposit_not_showing": [
        "I paid in {amt} in cash at the counter {past} and my balance has not changed",
        "the cheque I deposited in {city} is not showing in my account",
        "my cash deposit from {since} is still missing from my balance",
        "I put a cheque in the machine {n} days ago and the money is not there",
        "why has my cheque deposit of {amt} not cleared yet",
    ],
    "top_up_by_cash_or_cheque": [
        "can I top up my account with cash",
        "how do I add money to my account with a cheque",
        "is there somewhere in {city} where I can top up using cash",
        "can I top up with a cheque I received from my grandmother",
        "where can I pay in cash to top up my balance",
    ],
    "request_statement": [
        "I need a bank statement for the last {n} months",
        "can you send me a paper statement for my account",
        "how do I download my statement from {past} as a PDF",
        "I need an official statement for my mortgage application in {city}",
        "please post me my monthly statements, I do not use the app",
    ],
    # --- transfers
    "transfer_not_received_by_recipient": [
        "I sent {amt} to my landlord {past} but he says it has not arrived",
        "my friend in {city} still has not received the money I transferred",
        "the transfer shows as completed in my app but the recipient has nothing",
        "my supplier in {country} says my payment of {amt} never reached them",
        "I transferred money to my sister {past} and she has not got it",
    ],
    "declined_transfer": [
        "my transfer of {amt} was declined",
        "why was my bank transfer to {country} rejected",
        "the app says my transfer was declined {time}, I have enough money",
        "I cannot send money to my friend, the transfer keeps getting declined",
        "my transfer to pay {merchant} was refused by the bank",
    ],
    "pending_transfer": [
        "my transfer has been pending since {since}",
        "why is my transfer of {amt} still pending",
        "how long will my transfer to {country} stay pending",
        "the transfer to my savings is stuck on pending in the app",
        "I made a transfer {time} and it still says pending",
    ],
    "cancel_transfer": [
        "can I cancel a transfer I made by mistake",
        "I want to stop the transfer of {amt} I sent {time}",
        "how do I cancel a transfer to {country} before it goes through",
        "please cancel my last transfer, I typed the wrong amount",
        "is it too late to cancel the transfer I made {past}",
    ],
    "transfer_timing": [
        "how long does a transfer to {country} take",
        "if I send money today, when will it arrive in {city}",
        "how many working days does an international transfer take",
        "do transfers made at the weekend arrive on Monday",
        "what time should I send a transfer so it arrives the same day",
    ],
    "transfer_fee_charged": [
        "why was I charged a fee for my transfer",
        "there is a fee on my transfer of {amt} to {country}",
        "I thought transfers were free, why did I pay a charge {past}",
        "how much do you charge for sending money abroad",
        "you took a fee from the transfer I sent to {city}",
    ],
    "wrong_recipient": [
        "I sent {amt} to the wrong person",
        "I typed the wrong account number and paid a stranger",
        "my transfer {past} went to the wrong recipient, can I get it back",
        "I paid my old landlord instead of my new one, how do I recover {amt}",
        "the money went to someone with the same name in {city}, not my brother",
    ],
    "beneficiary_not_allowed": [
        "the app will not let me add a new payee",
        "why can I not add my cousin in {country} as a beneficiary",
        "adding a beneficiary fails with an error {time}",
        "I am not allowed to save {merchant} as a payee",
        "the new recipient I entered is rejected as not allowed",
    ],
    "balance_not_updated_after_bank_transfer": [
        "I transferred money in from my other bank but my balance has not changed",
        "my salary transfer should have arrived {past} but my balance is the same",
        "money I sent myself from another account is not showing yet",
        "a transfer of {amt} into my account is not reflected in my balance",
        "my employer in {city} says they paid me but my balance was not updated",
    ],
    "account_details": [
        "where do I find my account number and sort code",
        "what is my IBAN for receiving money from {country}",
        "my employer needs my account details, where are they in the app",
        "what details should I give someone who wants to pay me {amt}",
        "can you send me my bank details so {merchant} can pay me",
    ],
    "standing_order": [
        "how do I set up a standing order of {amt} a month",
        "I want to pay my rent by standing order on the first of each month",
        "can I change the amount of my standing order to {amt}",
        "how do I set up a weekly standing order to my son in {city}",
        "can a standing order start {future} instead of today",
    ],
    # --- top-ups
    "top_up_failed": [
        "my top-up did not go through",
        "I tried to top up {amt} and got an error",
        "why does my top-up keep failing {time}",
        "the top-up with my card from another bank failed",
        "I cannot top up my account, it says top-up failed",
    ],
    "pending_top_up": [
        "my top-up has been pending since {since}",
        "why is my top-up of {amt} still pending",
        "how long does a top-up stay pending",
        "I topped up {time} and it still shows pending",
        "my top-up is stuck on pending and I need the money in {city}",
    ],
    "top_up_reverted": [
        "my top-up went through and then the money was taken back",
        "a top-up of {amt} was reversed {past}, why",
        "I topped up successfully but the top-up was returned to my card",
        "why was my top-up cancelled after it showed in my balance",
        "the top-up reverted and my balance dropped by {amt}",
    ],
    "top_up_limits": [
        "what is the maximum I can top up in one go",
        "is there a limit on how much I can top up each month",
        "can I top up more than {amt} at once",
        "how many top-ups am I allowed per day",
        "I hit the top-up limit, can it be raised for my trip {future}",
    ],
    "top_up_fee": [
        "is there a fee for topping up by card",
        "why was I charged for my top-up of {amt}",
        "how much does it cost to top up with a credit card",
        "I topped up {past} and you took a fee",
        "do top-ups with a card from {country} have a charge",
    ],
    "automatic_top_up": [
        "how do I turn on automatic top-up",
        "can my account top up automatically when it drops below {amt}",
        "I want to switch off auto top-up",
        "my automatic top-up did not trigger {past}",
        "can auto top-up add {amt} every time my balance is low",
    ],
    # --- exchange
    "exchange_rate": [
        "what is your exchange rate for {cur} today",
        "how do you work out the exchange rate you offer",
        "is the exchange rate better at the weekend or during the week",
        "what rate would I get changing {amt} into {cur}",
        "do you use the interbank exchange rate",
    ],
    "exchange_charge": [
        "is there a fee for exchanging currency",
        "how much do you charge to exchange {amt} into {cur}",
        "why did I pay a charge when I exchanged money {past}",
        "are currency exchanges free up to a certain amount",
        "is there an extra exchange fee at the weekend",
    ],
    "exchange_via_app": [
        "how do I exchange currency in the app",
        "can I convert my pounds to {cur} in the app before I travel",
        "where in the app do I swap money between currencies",
        "I want to exchange {amt} into {cur} on my phone",
        "can I hold {cur} after exchanging in the app",
    ],
    "country_support": [
        "I am moving to {country}, can I keep my account",
        "do you open accounts for people who live in {country}",
        "which countries are your accounts available in",
        "can I sign up if my home address is in {country}",
        "is your bank available to residents outside the UK",
    ],
    "travel_notice": [
        "I am travelling to {country} {future}, do I need to tell you",
        "should I let you know before I go abroad so my card is not blocked",
        "how do I add a travel notice for my trip to {city}",
        "I will be in {country} for {n} weeks, can you note that on my account",
        "do I have to register my holiday dates before travelling",
    ],
    "lost_phone": [
        "I lost my phone with the banking app on it",
        "my phone was stolen in {city}, can someone get into my account",
        "how do I log out of the app on a phone I no longer have",
        "I left my phone in a taxi {past}, please lock my app access",
        "my phone is gone, how do I set up the app on a new one",
    ],
    # --- account, identity, app
    "passcode_forgotten": [
        "I forgot my app passcode",
        "how do I reset the passcode I use to open the app",
        "I cannot remember my passcode and the app locked me out {time}",
        "I entered the wrong passcode too often, how do I get back into the app",
        "I changed my passcode {past} and already forgot it",
    ],
    "verification_code_not_received": [
        "the verification code never arrives on my phone",
        "I am not getting the text message with my login code",
        "the one-time code for my payment of {amt} never came",
        "I asked for a new security code {n} times and received nothing",
        "I am abroad in {country} and the verification text does not arrive",
    ],
    "verify_my_identity": [
        "how do I verify my identity",
        "which documents do you accept to verify my identity",
        "can I verify my identity with a driving licence",
        "where in the app do I upload my ID for verification",
        "I have a passport from {country}, can I use it to verify my identity",
    ],
    "unable_to_verify_identity": [
        "the app keeps rejecting my ID photo",
        "my identity verification failed {n} times",
        "the selfie check for my identity verification will not work",
        "I uploaded my passport {past} and verification still failed",
        "I cannot get past the identity check, it says my documents are unreadable",
    ],
    "why_verify_identity": [
        "why do I need to verify my identity",
        "why are you asking for my ID again",
        "what do you do with the ID documents I send for verification",
        "why must I verify my identity before I can spend more than {amt}",
        "is identity verification really necessary for a basic account",
    ],
    "edit_personal_details": [
        "I moved to {city}, how do I change my address",
        "how do I update the phone number linked to my account",
        "I got married and need to change my surname",
        "can I change the email address on my account",
        "my address changed {past}, where do I update it in the app",
    ],
    "account_frozen": [
        "my account has been frozen and I do not know why",
        "all my payments are blocked because my account is suspended",
        "why was my account frozen {past}",
        "I cannot move any money, the app says my account is on hold",
        "my account got frozen after a payment of {amt}, please unfreeze it",
    ],
    "terminate_account": [
        "I want to close my account",
        "how do I delete my account and get my remaining {amt} back",
        "please close my account, I am moving to another bank",
        "what happens to my money if I close my account",
        "I would like my account closed {future}",
    ],
    "age_limit": [
        "how old do I need to be to open an account",
        "can my {n}-year-old have an account",
        "is there a minimum age for your card",
        "I am 16, am I allowed to open an account with you",
        "is there an upper age limit for opening an account",
    ],
}

# Each branch mostly sees its own kind of customer: its intents get weight HOME_WEIGHT, all others 1.
HOME_WEIGHT = 8
BRANCHES = {
    "branch-airport": [  # travellers
        "exchange_rate", "exchange_charge", "exchange_via_app", "card_payment_wrong_exchange_rate",
        "wrong_exchange_rate_for_cash_withdrawal", "country_support", "supported_cards_and_currencies",
        "card_acceptance", "lost_or_stolen_card", "atm_support", "lost_phone", "travel_notice",
    ],
    "branch-campus": [  # students
        "top_up_failed", "pending_top_up", "top_up_reverted", "top_up_limits", "top_up_fee", "automatic_top_up",
        "apple_pay_or_google_pay", "get_disposable_virtual_card", "virtual_card_not_working", "get_physical_card",
        "card_spending_limit", "age_limit",
    ],
    "branch-city": [  # businesses and commuters
        "transfer_not_received_by_recipient", "declined_transfer", "pending_transfer", "cancel_transfer",
        "transfer_timing", "transfer_fee_charged", "wrong_recipient", "beneficiary_not_allowed",
        "balance_not_updated_after_bank_transfer", "account_details", "standing_order", "getting_spare_card",
    ],
    "branch-high-street": [  # shoppers
        "declined_card_payment", "pending_card_payment", "card_payment_fee_charged", "card_payment_not_recognised",
        "reverted_card_payment", "extra_charge_on_statement", "direct_debit_payment_not_recognised",
        "request_refund", "refund_not_showing_up", "compromised_card", "card_not_working", "contactless_not_working",
    ],
    "branch-riverside": [  # older customers who use cash and cheques
        "cash_withdrawal_charge", "declined_cash_withdrawal", "pending_cash_withdrawal",
        "cash_withdrawal_not_recognised", "wrong_amount_of_cash_received", "card_swallowed", "pin_blocked",
        "change_pin", "deposit_not_showing", "top_up_by_cash_or_cheque", "card_expiring", "request_statement",
    ],
    "branch-online": [  # app-only customers
        "card_arrival", "card_delivery_estimate", "activate_my_card", "card_linking", "passcode_forgotten",
        "verification_code_not_received", "verify_my_identity", "unable_to_verify_identity", "why_verify_identity",
        "edit_personal_details", "account_frozen", "terminate_account",
    ],
}
HOME = {intent: branch for branch, intents in BRANCHES.items() for intent in intents}
assert sorted(HOME) == sorted(INTENTS) and len(HOME) == sum(map(len, BRANCHES.values())), "one home per intent"
assert all(len(set(t)) >= 4 for t in INTENTS.values()), "at least 4 distinct templates per intent"

OPENERS = ["", "", "Hello, ", "Hi, ", "Hi there, ", "Good morning. ", "Good evening, ", "Urgent: ", "Please help, ",
           "Quick question: ", "Sorry to bother you, "]
CLOSERS = ["", "", " Thanks.", " Thank you.", " Please call me back.", " What should I do?",
           " This is the second time I ask.", " I am a customer since {year}.", " My reference is {ref}.",
           " I am in {city2} until {until}.", " Please reply soon.", " Cheers."]
CITIES = ["Lyon", "Leeds", "Porto", "Ghent", "Turin", "Cork", "Bremen", "Malaga", "Krakow", "Bristol", "Utrecht",
          "Bergen"]
COUNTRIES = ["Spain", "Japan", "Canada", "Mexico", "Turkey", "Thailand", "Morocco", "Norway", "Poland", "Brazil"]
MERCHANTS = ["Greenleaf Market", "CityFuel", "Byte Electronics", "Luna Cafe", "Northway Rail", "PixelPlay",
             "Harbor Books", "QuickCab", "Maple Pharmacy", "Sunny Travel", "FreshBox", "the cinema"]
PAST = ["yesterday", "this morning", "last week", "on Friday", "two days ago", "on Monday", "last night"]
FUTURE = ["next week", "next month", "on Monday", "at the weekend", "in two weeks", "in March"]
SINCE = ["yesterday", "this morning", "last week", "Friday", "Monday", "the weekend"]
UNTIL = ["next week", "Monday", "the weekend", "the end of the month", "March"]
TIMES = ["this morning", "at lunchtime", "this afternoon", "tonight", "at 9am", "just after midnight", "around 6pm"]
CURRENCIES = ["euros", "US dollars", "Swiss francs", "Japanese yen", "Canadian dollars", "Polish zloty", "Turkish lira"]


def labels_line() -> str:
    return ",".join(INTENTS)


def message(intent: str, rnd: random.Random) -> str:
    body = rnd.choice(INTENTS[intent]).format(
        amt=f"{rnd.choice(['£', '€', '$'])}{rnd.choice([rnd.randint(5, 99), rnd.randint(100, 2500)])}",
        city=rnd.choice(CITIES), country=rnd.choice(COUNTRIES), merchant=rnd.choice(MERCHANTS), past=rnd.choice(PAST),
        future=rnd.choice(FUTURE), since=rnd.choice(SINCE), time=rnd.choice(TIMES), cur=rnd.choice(CURRENCIES),
        n=rnd.randint(2, 6))
    closer = rnd.choice(CLOSERS).format(year=rnd.randint(1985, 2024), ref=rnd.randint(10000, 99999),
                                        city2=rnd.choice(CITIES), until=rnd.choice(UNTIL))
    opener = rnd.choice(OPENERS)
    if not opener or opener.endswith(". "):  # a new sentence
        body = body[0].upper() + body[1:]
    return opener + body + ("." if closer and not body.endswith("?") else "") + closer


def write(name: str, n: int, seed: int, seen: set[str], at_least: int = 0) -> None:
    """n messages; the first ``at_least`` of each intent come from its home branch (so every intent
    is present), the rest from branches in turn, each drawing intents from its own mix."""
    rnd = random.Random(seed)
    names = list(INTENTS)
    branches = list(BRANCHES)
    picks = [(intent, HOME[intent]) for intent in names for _ in range(at_least)]
    for i in range(n - len(picks)):
        branch = branches[i % len(branches)]
        weights = [HOME_WEIGHT if HOME[x] == branch else 1 for x in names]
        picks.append((rnd.choices(names, weights=weights)[0], branch))
    rnd.shuffle(picks)
    write_unique(Path(__file__).with_name(name), ["message", "intent", "branch"], picks, message, rnd, seen)


if __name__ == "__main__":
    if sys.argv[1:] == ["--labels"]:
        print(labels_line())
        sys.exit(0)
    seen: set[str] = set()
    write("bank-intents.csv", 2400, seed=0, seen=seen)  # the nodes' records
    # the coordinator's own test set, disjoint; every intent at least 3 times so each is scored
    write("bank-intents-central-eval.csv", 400, seed=1, seen=seen, at_least=3)
